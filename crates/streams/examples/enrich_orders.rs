//! Orders (JSON, keyed by customer id) joined with the customers table (JSON, keyed by id):
//! each order written out with its customer's record, or without one when unknown.
//!
//! cargo run -p sluice-streams --example enrich_orders -- --gateway ADDR --app-id shop --input orders --table customers --output enriched

mod common;

use clap::Parser;
use serde_json::{Value, json};
use sluice_streams::{Json, StreamsBuilder};

fn main() -> std::process::ExitCode {
    let args = common::Args::parse();
    let Some(customers) = args.table.clone() else {
        eprintln!("error: --table names the customers topic");
        return std::process::ExitCode::from(2);
    };
    let b = StreamsBuilder::new();
    let table = b.table::<String, Json<Value>>(&customers, "customers");
    b.stream::<String, Json<Value>>(&args.input)
        .left_join(&table, |order, customer| Json(json!({"order": order.0, "customer": customer.map(|c| &c.0)})))
        .to(&args.output);
    common::run(b.build(), &args)
}
