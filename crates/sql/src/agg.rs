//! Aggregate functions: their state (a [`Value`] each, stored in a row), how a row adds to
//! it, how two session windows' states merge, and the result.

use std::sync::Arc;

use crate::SqlError;
use crate::expr::{EvalCtx, Scalar};
use crate::types::{SqlType, Value};

/// COLLECT_LIST and COLLECT_SET keep at most this many values, as ksqlDB's default.
const COLLECT_LIMIT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    CountDistinct,
    LatestByOffset,
    EarliestByOffset,
    CollectList,
    CollectSet,
}

/// An aggregate call of a query: the function and its compiled arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct AggCall {
    pub func: AggFunc,
    pub args: Vec<Scalar>,
    pub ty: SqlType,
}

impl AggFunc {
    pub fn named(name: &str, distinct: bool) -> Option<AggFunc> {
        Some(match name {
            "COUNT" if distinct => AggFunc::CountDistinct,
            "COUNT" => AggFunc::Count,
            "SUM" => AggFunc::Sum,
            "AVG" => AggFunc::Avg,
            "MIN" => AggFunc::Min,
            "MAX" => AggFunc::Max,
            "COUNT_DISTINCT" => AggFunc::CountDistinct,
            "LATEST_BY_OFFSET" => AggFunc::LatestByOffset,
            "EARLIEST_BY_OFFSET" => AggFunc::EarliestByOffset,
            "COLLECT_LIST" => AggFunc::CollectList,
            "COLLECT_SET" => AggFunc::CollectSet,
            _ => return None,
        })
    }

    /// The result type for these arguments.
    pub fn check(self, name: &str, args: &[(Scalar, SqlType)]) -> Result<SqlType, SqlError> {
        let bad = |why: &str| {
            let list: Vec<String> = args.iter().map(|(_, t)| t.to_string()).collect();
            SqlError::Type(format!("aggregate {name}({}): {why}", list.join(", ")))
        };
        if self == AggFunc::Count {
            return if args.len() <= 1 { Ok(SqlType::BigInt) } else { Err(bad("takes one column or *")) };
        }
        let [(_, t)] = args else { return Err(bad("takes one argument")) };
        Ok(match self {
            AggFunc::Sum if t.is_numeric() => t.clone(),
            AggFunc::Sum => return Err(bad("sums numbers")),
            AggFunc::Avg if t.is_numeric() => SqlType::Double,
            AggFunc::Avg => return Err(bad("averages numbers")),
            AggFunc::Min | AggFunc::Max => match t {
                SqlType::Array(_) | SqlType::Map(_) | SqlType::Struct(_) | SqlType::Boolean => {
                    return Err(bad("compares numbers, strings, dates and times"));
                }
                t => t.clone(),
            },
            AggFunc::CountDistinct => SqlType::BigInt,
            AggFunc::LatestByOffset | AggFunc::EarliestByOffset => t.clone(),
            AggFunc::CollectList | AggFunc::CollectSet => SqlType::Array(Box::new(t.clone())),
            AggFunc::Count => SqlType::BigInt,
        })
    }

    /// Whether a row can be taken back out of its state (table aggregations need it).
    pub fn retractable(self) -> bool {
        matches!(self, AggFunc::Count | AggFunc::Sum | AggFunc::Avg | AggFunc::CollectList)
    }

    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "COUNT",
            AggFunc::Sum => "SUM",
            AggFunc::Avg => "AVG",
            AggFunc::Min => "MIN",
            AggFunc::Max => "MAX",
            AggFunc::CountDistinct => "COUNT_DISTINCT",
            AggFunc::LatestByOffset => "LATEST_BY_OFFSET",
            AggFunc::EarliestByOffset => "EARLIEST_BY_OFFSET",
            AggFunc::CollectList => "COLLECT_LIST",
            AggFunc::CollectSet => "COLLECT_SET",
        }
    }

    /// The state before any row.
    pub fn init(self) -> Value {
        match self {
            AggFunc::Count => Value::BigInt(0),
            AggFunc::Avg => Value::Array(Arc::new(vec![Value::Double(0.0), Value::BigInt(0)])),
            AggFunc::CountDistinct | AggFunc::CollectList | AggFunc::CollectSet => Value::Array(Arc::new(Vec::new())),
            _ => Value::Null,
        }
    }
}

impl AggCall {
    /// The state after the row `row`.
    pub fn add(&self, state: Value, row: &[Value]) -> Value {
        let cx = EvalCtx::default();
        let arg = self.args.first().map(|a| a.eval(row, &cx));
        match self.func {
            AggFunc::Count => {
                let n = state.as_i64().unwrap_or(0);
                let counts = arg.as_ref().is_none_or(|v| !v.is_null());
                Value::BigInt(n + counts as i64)
            }
            _ => {
                let v = arg.unwrap_or(Value::Null);
                // Every other aggregate ignores nulls, as ksqlDB's do.
                if v.is_null() {
                    return state;
                }
                self.fold(state, v)
            }
        }
    }

    fn fold(&self, state: Value, v: Value) -> Value {
        match self.func {
            AggFunc::Sum => match state {
                Value::Null => v,
                s => add(&s, &v),
            },
            AggFunc::Avg => {
                let (sum, n) = avg_parts(&state);
                Value::Array(Arc::new(vec![Value::Double(sum + v.as_f64().unwrap_or(0.0)), Value::BigInt(n + 1)]))
            }
            AggFunc::Min | AggFunc::Max => match state.compare(&v) {
                None => v,
                Some(o) if (self.func == AggFunc::Min) == o.is_gt() => v,
                Some(_) => state,
            },
            AggFunc::CountDistinct | AggFunc::CollectSet => {
                let mut items = items(state);
                if !items.iter().any(|x| x == &v)
                    && items.len() < if self.func == AggFunc::CollectSet { COLLECT_LIMIT } else { usize::MAX }
                {
                    items.push(v);
                }
                Value::Array(Arc::new(items))
            }
            AggFunc::CollectList => {
                let mut items = items(state);
                if items.len() < COLLECT_LIMIT {
                    items.push(v);
                }
                Value::Array(Arc::new(items))
            }
            AggFunc::LatestByOffset => v,
            AggFunc::EarliestByOffset => {
                if state.is_null() {
                    v
                } else {
                    state
                }
            }
            AggFunc::Count => state,
        }
    }

    /// The state with row `row` taken back out (a table row that changed or left its group);
    /// only for [`AggFunc::retractable`] functions.
    pub fn retract(&self, state: Value, row: &[Value]) -> Value {
        let arg = self.args.first().map(|a| a.eval(row, &EvalCtx::default()));
        match self.func {
            AggFunc::Count => {
                let counted = arg.as_ref().is_none_or(|v| !v.is_null());
                Value::BigInt(state.as_i64().unwrap_or(0) - counted as i64)
            }
            _ => {
                let v = arg.unwrap_or(Value::Null);
                if v.is_null() {
                    return state;
                }
                match self.func {
                    AggFunc::Sum => match (&state, &v) {
                        (Value::Int(x), Value::Int(y)) => Value::Int(x.wrapping_sub(*y)),
                        (Value::Double(_), _) | (_, Value::Double(_)) => {
                            Value::Double(state.as_f64().unwrap_or(0.0) - v.as_f64().unwrap_or(0.0))
                        }
                        _ => Value::BigInt(state.as_i64().unwrap_or(0).wrapping_sub(v.as_i64().unwrap_or(0))),
                    },
                    AggFunc::Avg => {
                        let (sum, n) = avg_parts(&state);
                        Value::Array(Arc::new(vec![
                            Value::Double(sum - v.as_f64().unwrap_or(0.0)),
                            Value::BigInt(n - 1),
                        ]))
                    }
                    AggFunc::CollectList => {
                        let mut items = items(state);
                        if let Some(i) = items.iter().position(|x| *x == v) {
                            items.remove(i);
                        }
                        Value::Array(Arc::new(items))
                    }
                    _ => state,
                }
            }
        }
    }

    /// Two sessions' states made one (`a` the earlier session).
    pub fn merge(&self, a: Value, b: Value) -> Value {
        match self.func {
            AggFunc::Count => Value::BigInt(a.as_i64().unwrap_or(0) + b.as_i64().unwrap_or(0)),
            AggFunc::Avg => {
                let ((s1, n1), (s2, n2)) = (avg_parts(&a), avg_parts(&b));
                Value::Array(Arc::new(vec![Value::Double(s1 + s2), Value::BigInt(n1 + n2)]))
            }
            AggFunc::CountDistinct | AggFunc::CollectList | AggFunc::CollectSet => {
                let mut state = a;
                for v in items(b) {
                    state = self.fold(state, v);
                }
                state
            }
            AggFunc::LatestByOffset => {
                if b.is_null() {
                    a
                } else {
                    b
                }
            }
            AggFunc::EarliestByOffset => {
                if a.is_null() {
                    b
                } else {
                    a
                }
            }
            _ if b.is_null() => a,
            _ => self.fold(a, b),
        }
    }

    /// The aggregate's result from its state.
    pub fn result(&self, state: &Value) -> Value {
        match self.func {
            AggFunc::Avg => match avg_parts(state) {
                (_, 0) => Value::Null,
                (sum, n) => Value::Double(sum / n as f64),
            },
            AggFunc::CountDistinct => match state {
                Value::Array(items) => Value::BigInt(items.len() as i64),
                _ => Value::BigInt(0),
            },
            _ => state.clone(),
        }
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => Arc::try_unwrap(items).unwrap_or_else(|a| (*a).clone()),
        _ => Vec::new(),
    }
}

fn avg_parts(v: &Value) -> (f64, i64) {
    match v {
        Value::Array(p) => {
            (p.first().and_then(Value::as_f64).unwrap_or(0.0), p.get(1).and_then(Value::as_i64).unwrap_or(0))
        }
        _ => (0.0, 0),
    }
}

fn add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.wrapping_add(*y)),
        (Value::Double(_), _) | (_, Value::Double(_)) => {
            Value::Double(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0))
        }
        _ => Value::BigInt(a.as_i64().unwrap_or(0).wrapping_add(b.as_i64().unwrap_or(0))),
    }
}
