//! Query-validation tests in ksqlDB's style: each case in `tests/cases/*.json` gives
//! statements, input records, and the output records, pull-query rows or error expected.
//! They run in memory ([`Harness`]), every persistent query in a Streams test driver.

use serde_json::Value as Json;
use sluice_sql::Outcome;
use sluice_sql::harness::{Harness, TopicRecord};

fn run_case(case: &Json) -> Result<(), String> {
    let mut h = Harness::new();
    let statements: Vec<&str> =
        case["statements"].as_array().ok_or("no statements")?.iter().filter_map(Json::as_str).collect();
    let expected_error = case.get("error").and_then(Json::as_str);
    for s in &statements {
        match h.execute(s) {
            Ok(_) => {}
            Err(e) => {
                return match expected_error {
                    Some(want) if e.to_string().contains(want) => Ok(()),
                    Some(want) => Err(format!("error '{e}' does not contain '{want}'")),
                    None => Err(format!("statement failed: {s}: {e}")),
                };
            }
        }
    }
    if let Some(want) = expected_error {
        return Err(format!("expected an error containing '{want}', none came"));
    }
    for input in case.get("inputs").and_then(Json::as_array).into_iter().flatten() {
        let topic = input["topic"].as_str().ok_or("input without topic")?;
        let (key, value) = h.encode_json(topic, &input["key"], &input["value"])?;
        let timestamp = input["timestamp"].as_i64().unwrap_or(0);
        h.produce(topic, TopicRecord { key, value, timestamp })?;
    }
    if let Some(outputs) = case.get("outputs").and_then(Json::as_array) {
        let mut topics: Vec<&str> = outputs.iter().filter_map(|o| o["topic"].as_str()).collect();
        topics.dedup();
        for topic in topics {
            let want: Vec<&Json> = outputs.iter().filter(|o| o["topic"] == topic).collect();
            let got = h.records(topic);
            let mut got_json = Vec::new();
            for r in got {
                let (key, value, window) = h.decode_json(topic, r)?;
                let mut o = serde_json::json!({"topic": topic, "key": key, "value": value, "timestamp": r.timestamp});
                if let Some((start, end)) = window {
                    o["window"] = serde_json::json!({"start": start, "end": end});
                }
                got_json.push(o);
            }
            let want: Vec<Json> = want.into_iter().cloned().collect();
            if got_json != want {
                return Err(format!(
                    "topic {topic}:\n  expected {}\n  got      {}",
                    serde_json::to_string(&want).unwrap_or_default(),
                    serde_json::to_string(&got_json).unwrap_or_default()
                ));
            }
        }
    }
    // Statements answering rows (SHOW, DESCRIBE, EXPLAIN): exact rows, or text they contain.
    for r in case.get("results").and_then(Json::as_array).into_iter().flatten() {
        let sql = r["sql"].as_str().ok_or("result without sql")?;
        let outcomes = h.execute(sql).map_err(|e| format!("{sql}: {e}"))?;
        let rows = match outcomes.into_iter().next() {
            Some(Outcome::Rows { rows, .. }) => rows,
            Some(Outcome::Terminated(ids)) => vec![ids],
            Some(Outcome::Dropped { name, delete_topic }) => vec![vec![name, delete_topic.unwrap_or_default()]],
            _ => return Err(format!("{sql}: no rows")),
        };
        let got =
            Json::Array(rows.iter().map(|r| Json::Array(r.iter().cloned().map(Json::String).collect())).collect());
        if let Some(want) = r.get("rows")
            && &got != want
        {
            return Err(format!("{sql}:\n  expected {want}\n  got      {got}"));
        }
        if let Some(text) = r.get("contains").and_then(Json::as_str)
            && !got.to_string().contains(text)
        {
            return Err(format!("{sql}: {got} does not contain {text}"));
        }
    }
    for pull in case.get("pulls").and_then(Json::as_array).into_iter().flatten() {
        let sql = pull["sql"].as_str().ok_or("pull without sql")?;
        let (_, rows) = h.pull(sql).map_err(|e| format!("{sql}: {e}"))?;
        let got: Vec<Json> =
            rows.iter().map(|r| Json::Array(r.iter().map(sluice_sql::format::to_json).collect())).collect();
        let want = pull["rows"].as_array().cloned().unwrap_or_default();
        if got != want {
            return Err(format!("{sql}:\n  expected {}\n  got      {}", Json::Array(want), Json::Array(got)));
        }
    }
    Ok(())
}

#[test]
fn query_validation_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    let (mut ran, mut failures) = (0, Vec::new());
    for f in files {
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for case in doc["tests"].as_array().unwrap() {
            ran += 1;
            let name =
                format!("{}: {}", f.file_name().unwrap().to_string_lossy(), case["name"].as_str().unwrap_or("?"));
            if let Err(e) = run_case(case) {
                failures.push(format!("{name}\n  {e}"));
            }
        }
    }
    assert!(ran > 0);
    assert!(failures.is_empty(), "{} of {ran} cases failed:\n{}", failures.len(), failures.join("\n"));
}
