//! `tollgate`: the admin's command (`tollgate check`).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tollgate_api::policy::Policy;
use tollgate_ctl::check::{Finding, Severity, evaluate};
use tollgate_ctl::gather::{Target, snapshot};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "tollgate, the admin's command", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the cluster is set up for tollgate: API server version; the webhook registered, its caBundle
    /// trusting the certificate it serves and how long that is valid; every pod serving it; per analysis
    /// namespace the route ConfigMap, the credentials Secret, Pod Security, a closing NetworkPolicy, and a
    /// plain pod coming back hardened (a server-side dry run); per node, whether the egress lock (the
    /// tollgate-cni DaemonSet) is installed and ready, when the policy requires it or the DaemonSet is installed,
    /// and why not where it is not. Every finding has a hint. Exit code: 0 when
    /// nothing is wrong (warnings allowed), 1 on any error, 2 when the cluster cannot be asked.
    Check {
        /// Where tollgate is installed.
        #[arg(long, short = 'n', default_value = "tollgate")]
        namespace: String,
        /// The MutatingWebhookConfiguration.
        #[arg(long, default_value = "tollgate")]
        webhook_config: String,
        /// The webhook's serving Secret (tls.crt).
        #[arg(long, default_value = "tollgate-webhook-tls")]
        secret: String,
        /// Warn about a serving certificate that expires within this many days.
        #[arg(long, default_value_t = 14)]
        expiry_warning_days: i64,
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
        /// Also list the pods whose proxy is not what tollgate would inject today (another image, policy or
        /// release: running pods keep what they were admitted with after `helm upgrade`), and the pods in a
        /// selected namespace tollgate never saw; each with the command that recreates it.
        #[arg(long)]
        proxy: bool,
        /// Before installing: whether the cluster serves what tollgate needs (version, admission APIs), what its
        /// nodes are (the egress lock's CNI directories), and what tollgate would do to the pods already running
        /// in the namespaces it would select (each run through the webhook's own hardening). Nothing of tollgate
        /// needs to be installed; nothing is changed.
        #[arg(long, conflicts_with = "proxy")]
        pre: bool,
        /// With --pre: the policy to judge the pods by (default: the embedded one, `tollgate-webhook default-policy`).
        #[arg(long, requires = "pre", value_name = "FILE")]
        policy: Option<std::path::PathBuf>,
        /// With --pre: the namespaces tollgate would select, as a label selector.
        #[arg(long, requires = "pre", default_value = "tollgate.dev/inject=enabled", value_name = "SELECTOR")]
        namespace_selector: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let mark = match f.severity {
            Severity::Ok => "ok  ",
            Severity::Warning => "WARN",
            Severity::Error => "FAIL",
        };
        out.push_str(&format!("[{mark}] {:<20} {}: {}\n", f.check, f.subject, f.message.replace('\n', "\n         ")));
        if let Some(hint) = &f.hint {
            out.push_str(&format!("       hint: {hint}\n"));
        }
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    out.push_str(&format!("{} errors, {} warnings, {} ok\n", count(Severity::Error), count(Severity::Warning), count(Severity::Ok)));
    out
}

/// `--pre`'s policy: the file given, else the embedded default; none without `--pre`.
fn pre_policy(pre: bool, file: Option<&std::path::Path>) -> Result<Option<Policy>, String> {
    match (pre, file) {
        (false, _) => Ok(None),
        (true, None) => Ok(Some(Policy::default())),
        (true, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Policy::from_yaml(&text).map_err(|e| e.to_string()))
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Every finding, or why the cluster could not be asked.
async fn findings(target: &Target, pre_policy: Option<&Policy>, namespace_selector: &str, proxy: bool) -> Result<Vec<Finding>, String> {
    let client = kube::Client::try_default().await.map_err(|e| format!("connecting to the API server: {e}"))?;
    if let Some(policy) = pre_policy {
        let snapshot = tollgate_ctl::gather::pre_snapshot(&client, namespace_selector).await;
        return Ok(tollgate_ctl::preflight::evaluate(&snapshot, policy));
    }
    let mut findings = evaluate(&snapshot(client.clone(), target).await);
    if proxy {
        match tollgate_ctl::gather::proxies(&client, target).await {
            Ok((pods, current)) => findings.extend(tollgate_ctl::proxies::evaluate(&pods, &current)),
            Err(why) => findings.push(Finding {
                check: "proxies",
                subject: "selected namespaces".into(),
                severity: Severity::Warning,
                message: format!("not checked: {why}"),
                hint: Some("run with rights to read the policy ConfigMap, the webhook configuration, namespaces and pods".into()),
            }),
        }
    }
    Ok(findings)
}

fn render(output: Output, findings: &[Finding]) -> String {
    match output {
        Output::Text => text(findings),
        Output::Json => {
            let count = |s| findings.iter().filter(|f| f.severity == s).count();
            let report = serde_json::json!({
                "errors": count(Severity::Error),
                "warnings": count(Severity::Warning),
                "findings": findings,
            });
            format!("{report:#}\n")
        }
    }
}

fn main() -> ExitCode {
    let Command::Check { namespace, webhook_config, secret, expiry_warning_days, output, proxy, pre, policy, namespace_selector } =
        Cli::parse().command;
    let pre_policy = match pre_policy(pre, policy.as_deref()) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let target = Target {
        namespace,
        webhook_config,
        policy_config_map: "tollgate-policy".into(),
        serving_secret: secret,
        webhook_pod_selector: "app.kubernetes.io/name=tollgate-webhook".into(),
        expiry_warning_days,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let findings = match runtime.block_on(findings(&target, pre_policy.as_ref(), &namespace_selector, proxy)) {
        Ok(findings) => findings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(render(output, &findings).as_bytes()).and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing to stdout: {e}");
        return ExitCode::from(2);
    }
    if findings.iter().any(|f| f.severity == Severity::Error) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
