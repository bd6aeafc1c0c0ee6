//! `tollgate-chart-files [--write]`: check (or, with --write, update) the Helm chart's generated files
//! (tollgate_e2e::chart_files says which, and how they are made).

use std::process::ExitCode;

fn main() -> ExitCode {
    let write = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--write") => true,
        Some(other) => {
            eprintln!("error: unknown argument {other:?}; usage: tollgate-chart-files [--write]");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for file in tollgate_e2e::chart_files::files() {
        let path = file.path.display();
        let result = std::fs::read_to_string(&file.path)
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(String::new()) } else { Err(e) })
            .map_err(|e| format!("{path}: {e}"))
            .and_then(|current| {
                let wanted = (file.generate)(&current)?;
                match (current == wanted, write) {
                    (true, _) => Ok(format!("{path}: up to date")),
                    (false, true) => {
                        std::fs::write(&file.path, wanted).map(|()| format!("{path}: updated")).map_err(|e| format!("{path}: {e}"))
                    }
                    (false, false) => Err(format!("{path}: out of date; run with --write")),
                }
            });
        match result {
            Ok(message) => println!("{message}"),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
