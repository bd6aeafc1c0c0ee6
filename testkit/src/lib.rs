//! Helpers tollgate's test suites share, each written once: ports for child processes, raw HTTP/1 exchanges
//! read back as text, commands fed on stdin, polling with a deadline, and suites of steps run in an explicit
//! order. Nothing here ships: it is a dev-dependency of the crates it tests (and a dependency of the test crate
//! `tollgate-e2e`). Std and serde_json only, so that testing a crate pulls in no runtime it does not use.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---- ports ----

/// A port for a listener a child process will bind, from below the kernel's ephemeral range (32768 and up),
/// where every OS-assigned port (the in-process stand-ins' too) lives: between choosing it and the child binding
/// it, nothing in this process can be handed the same port (a port asked of the OS and released could be). Test
/// binaries run one after another, but each starts at an offset of its own anyway.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let offset = (std::process::id() % 100) * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left in {FIRST}..{}", FIRST + SPAN);
        let port = u16::try_from(FIRST + (offset + n) % SPAN).expect("fits");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

// ---- raw HTTP/1 ----

/// A response read off a raw connection, as text: what a test asserts on when the exact bytes on the wire
/// matter more than an HTTP client's view of them. Status 0: no response at all.
#[derive(Debug, Default, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// Everything a server sent until it closed, split into head and body (status 0 without a status line),
    /// the body de-chunked when the head says chunked.
    pub fn parse(bytes: &[u8]) -> RawResponse {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_owned(), b.to_owned())).unwrap_or((text.clone(), String::new()));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
        RawResponse { status, head, body }
    }

    /// The body as JSON; a body that is not fails the test, showing the whole response.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// A chunked body's content, well enough for JSON and short texts: up to the last chunk, or to the first
/// malformed or incomplete one.
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Send `request` to `addr` byte for byte and read the response until the server closes (or `timeout` passes
/// without a byte: what came until then). An error only when no connection was made or the request could not
/// be written.
pub fn exchange(addr: impl ToSocketAddrs, request: &[u8], timeout: Duration) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut bytes = Vec::new();
    // A reset or a timeout after part of the response: the part is what the test judges.
    let _ = stream.read_to_end(&mut bytes);
    Ok(RawResponse::parse(&bytes))
}

// ---- commands ----

/// What a command printed, stdout then stderr: the text a failed assertion about it shows.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Run `command` with `input` on its stdin, capturing stdout and stderr. The input is written while the output
/// is read, so neither side waits on a full pipe. The command may exit (on an error) before reading all of its
/// input: a closed pipe is fine, any other failure to write is not.
pub fn output_with_stdin(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program()));
    let mut stdin = child.stdin.take().expect("piped");
    let (written, out) = std::thread::scope(|scope| {
        // The pipe closes when the writer is done (or gives up): the command sees the end of its input.
        let writer = scope.spawn(move || stdin.write_all(input));
        let out = child.wait_with_output();
        (writer.join().expect("the stdin writer"), out)
    });
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing the stdin of {:?}: {e}", command.get_program());
    }
    out.unwrap()
}

// ---- waiting ----

/// Ask `check` every `every` until it gives a value, and return that; fail the test once `limit` has passed.
/// For conditions another process makes true in its own time.
pub fn wait_until<T>(limit: Duration, every: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(every);
    }
}

// ---- steps in an explicit order ----

/// `steps![a, b, c]`: the list [`run_steps`] takes, each function under its own name (so that the name a
/// developer selects and the function that runs cannot drift apart).
#[macro_export]
macro_rules! steps {
    ($($step:ident),+ $(,)?) => {
        &[$((stringify!($step), $step as fn())),+]
    };
}

/// Run `steps` one after another, in the order given: for suites whose steps share one cluster and build on
/// each other, where the order is part of the test (and not the sort order of names). Each step is named on
/// stderr as it starts and as it ends, with its time, as it happens (not captured by the test harness, so a
/// long run shows where it is). The first step that fails stops the run, and the test fails naming it.
///
/// `only` names an environment variable which, when set and not empty, holds a comma-separated list of step
/// names: only those run (still in the suite's order) — for developing one step. An unknown name fails the
/// test before anything runs.
pub fn run_steps(suite: &str, only: &str, steps: &[(&str, fn())]) {
    let selected: Vec<String> =
        std::env::var(only).unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
    let unknown: Vec<&String> = selected.iter().filter(|n| !steps.iter().any(|(name, _)| name == n)).collect();
    assert!(
        unknown.is_empty(),
        "{only}: no {suite} step {unknown:?}; the steps are:\n{}",
        steps.iter().map(|(name, _)| *name).collect::<Vec<_>>().join("\n")
    );
    let chosen: Vec<&(&str, fn())> = steps.iter().filter(|(name, _)| selected.is_empty() || selected.iter().any(|n| n == name)).collect();
    let progress = |line: String| {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    };
    let suite_started = Instant::now();
    for (i, (name, step)) in chosen.iter().enumerate() {
        let label = format!("{suite} step {}/{} {name}", i + 1, chosen.len());
        progress(format!("{label}: started"));
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(step);
        let took = started.elapsed().as_secs_f64();
        if let Err(panic) = outcome {
            progress(format!("{label}: FAILED after {took:.1} s"));
            let not_run: Vec<&str> = chosen[i + 1..].iter().map(|(name, _)| *name).collect();
            panic!("{suite} step {name} failed after {took:.1} s: {}\nnot run after it: {not_run:?}", panic_message(panic));
        }
        progress(format!("{label}: passed in {took:.1} s"));
    }
    progress(format!("{suite}: {} step(s) passed in {:.1} s", chosen.len(), suite_started.elapsed().as_secs_f64()));
}

/// What a caught panic said (its `panic!` message; empty when it carried something else).
pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_response_is_split_and_de_chunked() {
        let plain = RawResponse::parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!((plain.status, plain.head.as_str(), plain.body.as_str()), (200, "HTTP/1.1 200 OK\r\ncontent-length: 2", "{}"));
        let chunked = RawResponse::parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!((chunked.status, chunked.body.as_str()), (404, "abcde"));
        assert_eq!(RawResponse::parse(b"").status, 0);
        assert_eq!(dechunk("5\r\nab"), "", "an incomplete chunk ends the body");
    }

    #[test]
    fn a_command_gets_its_input_and_may_leave_it_unread() {
        let out = output_with_stdin(Command::new("cat").arg("-"), b"hello");
        assert_eq!(text(&out), "hello");
        let big = vec![b'x'; 1 << 20];
        let out = output_with_stdin(&mut Command::new("true"), &big);
        assert!(out.status.success());
        // More than a pipe holds, echoed back while it is written.
        let out = output_with_stdin(&mut Command::new("cat"), &big);
        assert_eq!(out.stdout.len(), big.len());
    }

    #[test]
    fn waiting_returns_the_first_value() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), Duration::from_millis(1), "three", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    fn first() {}
    fn second() {}

    #[test]
    fn steps_keep_their_names() {
        const STEPS: &[(&str, fn())] = steps![first, second];
        assert_eq!(STEPS.iter().map(|(name, _)| *name).collect::<Vec<_>>(), ["first", "second"]);
        run_steps("unit", "TOLLGATE_TESTKIT_NO_SUCH_VARIABLE", STEPS);
    }

    static AFTER_THE_FAILURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    fn fails() {
        panic!("as it should");
    }
    fn after() {
        AFTER_THE_FAILURE.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn the_first_failure_stops_the_run_and_is_named() {
        let failed = std::panic::catch_unwind(|| run_steps("unit", "TOLLGATE_TESTKIT_NO_SUCH_VARIABLE", steps![first, fails, after]));
        let message = failed.expect_err("the run fails").downcast::<String>().expect("a message");
        assert!(message.starts_with("unit step fails failed after ") && message.contains("as it should"), "{message}");
        assert!(message.ends_with(r#"not run after it: ["after"]"#), "{message}");
        assert!(!AFTER_THE_FAILURE.load(std::sync::atomic::Ordering::SeqCst));
    }
}
