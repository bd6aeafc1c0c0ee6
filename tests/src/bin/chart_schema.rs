//! `tollgate-chart-schema [--write]`: check (or, with --write, update) the generated parts of the Helm chart's
//! values.schema.json (tollgate_e2e::chart_schema says which).

use std::process::ExitCode;

fn main() -> ExitCode {
    let write = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--write") => true,
        Some(other) => {
            eprintln!("error: unknown argument {other:?}; usage: tollgate-chart-schema [--write]");
            return ExitCode::from(2);
        }
    };
    let path = tollgate_e2e::chart_schema::path();
    let result = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display())).and_then(|current| {
        let wanted = tollgate_e2e::chart_schema::generate(&current)?;
        match (current == wanted, write) {
            (true, _) => Ok(format!("{}: up to date", path.display())),
            (false, true) => std::fs::write(&path, wanted).map(|()| format!("{}: updated", path.display())).map_err(|e| e.to_string()),
            (false, false) => Err(format!("{}: out of date; run with --write", path.display())),
        }
    });
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
