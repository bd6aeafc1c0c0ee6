//! `tollgate-cni`: run by the container runtime as a CNI plugin (when `CNI_COMMAND` is set), or by the
//! DaemonSet and by admins as the installer and diagnostics tool.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tollgate_api::names;
use tollgate_cni::install::{self, BinDir, Paths};
use tollgate_cni::plugin::{self, CniError, Environment, Netns};
use tollgate_cni::rules::{Chain, drop_tag};

/// tollgate's egress lock. Run by the container runtime as a chained CNI plugin (it then reads CNI_COMMAND,
/// CNI_NETNS, … and the network configuration on stdin, and never takes arguments); run by the tollgate-cni
/// DaemonSet to install itself on a node; run by admins to inspect a pod's lock.
#[derive(Parser)]
#[command(name = "tollgate-cni", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct NodeDirs {
    /// The node's CNI plugin directory, as mounted here.
    #[arg(long, env = names::ENV_CNI_BIN_DIR, default_value = names::DEFAULT_CNI_BIN_DIR)]
    bin_dir: PathBuf,
    /// k3s's data directory (the node's /var/lib/rancher/k3s/data), as mounted here, instead of --bin-dir:
    /// the plugin goes into its `cni` directory and every bundle's `bin`, whichever k3s names.
    #[arg(long, env = names::ENV_CNI_K3S_DATA_DIR)]
    k3s_data_dir: Option<PathBuf>,
    /// The node's CNI configuration directory, as mounted here.
    #[arg(long, env = names::ENV_CNI_CONF_DIR, default_value = names::DEFAULT_CNI_CONF_DIR)]
    conf_dir: PathBuf,
    /// Where the node's / is mounted here: messages name paths as the node knows them.
    #[arg(long, env = names::ENV_CNI_HOST_ROOT)]
    host_root: Option<PathBuf>,
    /// Chain only when the configuration's network plugin is in the bin directory (the sign that the runtime
    /// looks for plugins there). Leave it off when the runtime searches several directories.
    #[arg(long, env = names::ENV_CNI_VERIFY_BIN_DIR)]
    verify_bin_dir: bool,
    /// The plugin binary to install (default: this one).
    #[arg(long)]
    source: Option<PathBuf>,
}

impl NodeDirs {
    fn paths(self) -> Result<Paths, String> {
        let source = match self.source {
            Some(s) => s,
            None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
        };
        let bin_dir = match self.k3s_data_dir {
            Some(data) => BinDir::K3sData(data),
            None => BinDir::Dir(self.bin_dir),
        };
        Ok(Paths { bin_dir, conf_dir: self.conf_dir, source, host_root: self.host_root, verify_bin_dir: self.verify_bin_dir })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the binary and chain it into the node's primary CNI configuration, then keep it so (re-checked
    /// every --interval) until SIGTERM. Leaves everything in place when it stops. When the node cannot have
    /// the lock for --fail-after seconds on end, writes what it did not find to --termination-log and exits 1,
    /// so that the DaemonSet's pod shows the failure (Error, then CrashLoopBackOff, with the message).
    Install {
        #[command(flatten)]
        dirs: NodeDirs,
        /// How often to re-check (the node's network plugin may rewrite its configuration).
        #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        /// Give up after failing this long without a break (0: never).
        #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=86400))]
        fail_after: u64,
        /// Where the message goes when giving up (the container's terminationMessagePath), if it exists.
        #[arg(long, default_value = "/dev/termination-log")]
        termination_log: PathBuf,
        /// The platform the directories were chosen for (the chart's egressLock.platform), for the message.
        #[arg(long, env = names::ENV_CNI_PLATFORM)]
        platform: Option<String>,
        /// Install once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Exit 0 when the node is set up (binary in place, primary configuration chained), else say what is
    /// missing and exit 1. The DaemonSet's readiness probe.
    CheckInstall {
        #[command(flatten)]
        dirs: NodeDirs,
    },
    /// Remove the plugin from the node's CNI configuration, then the binary.
    Uninstall {
        #[command(flatten)]
        dirs: NodeDirs,
    },
    /// Print a pod's lock as JSON: its rules and how many packets each chain dropped. Needs root on the node.
    Status {
        /// The pod's network namespace (`/run/netns/cni-…`, or `/proc/PID/ns/net` of a process in the pod).
        #[arg(long)]
        netns: PathBuf,
    },
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return run_plugin();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Install { dirs, interval, fail_after, termination_log, platform, once } => dirs.paths().and_then(|p| {
            let give_up = GiveUp { after: Duration::from_secs(fail_after), log: termination_log, platform };
            run_installer(&p, Duration::from_secs(interval), once, &give_up)
        }),
        Cmd::CheckInstall { dirs } => {
            dirs.paths().and_then(|p| install::check(&p)).map(|()| println!("tollgate-cni is installed and chained"))
        }
        Cmd::Uninstall { dirs } => dirs.paths().and_then(|p| {
            let changes = install::uninstall(&p).map_err(|e| e.to_string())?;
            for change in changes {
                log("INFO", &change);
            }
            Ok(())
        }),
        Cmd::Status { netns } => status(&netns),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log("ERROR", &e);
            ExitCode::FAILURE
        }
    }
}

/// Far above any real network configuration (with every pod annotation in it).
const MAX_CONFIG: u64 = 1 << 20;

/// The runtime's side: the answer on stdout (a result, or an error result with a non-zero exit).
fn run_plugin() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_CONFIG + 1).read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(String::from))
        .filter(|v| plugin::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".into());
    let outcome = match read {
        Err(e) => Err(CniError { code: plugin::CODE_IO, msg: "reading the network configuration".into(), details: e.to_string() }),
        Ok(n) if n as u64 > MAX_CONFIG => Err(CniError {
            code: plugin::CODE_DECODE,
            msg: format!("the network configuration on stdin is larger than {MAX_CONFIG} bytes"),
            details: String::new(),
        }),
        Ok(_) => Environment::from_vars(|k| std::env::var(k).ok()).and_then(|env| plugin::run(&env, &stdin, &mut Netns)),
    };
    let (answer, code) = match outcome {
        Ok(Some(result)) => (Some(result), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&version)), ExitCode::FAILURE),
    };
    if let Some(answer) = answer {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &answer);
        let _ = out.write_all(b"\n");
    }
    code
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// When and how the installer gives up on a node that cannot have the lock.
struct GiveUp {
    after: Duration,
    log: PathBuf,
    platform: Option<String>,
}

impl GiveUp {
    /// The message a failing node's pod shows: what was not found, and what to change.
    fn message(&self, error: &str) -> String {
        let node = std::env::var("NODE_NAME").map(|n| format!("node {n}")).unwrap_or_else(|_| "this node".into());
        let platform = match &self.platform {
            Some(p) => format!("egressLock.platform is {p}: set it to this node's (kubeadm, rke2, microk8s, k3s, gke), or "),
            None => String::new(),
        };
        format!(
            "the egress lock cannot be installed on {node}: {error}. Locked pods will not start there. Fix: {platform}set \
             the directories the node's container runtime uses (egressLock.binDir, egressLock.confDir; charts/tollgate/README.md, \
             \"The egress lock on your platform\")"
        )
    }

    /// Writes the message where the kubelet reads a terminated container's message, when that file exists.
    fn write(&self, message: &str) {
        if self.log.exists() {
            let _ = std::fs::write(&self.log, message);
        }
    }
}

fn run_installer(paths: &Paths, interval: Duration, once: bool, give_up: &GiveUp) -> Result<(), String> {
    if once {
        return match install::install_once(paths) {
            Ok(changes) => {
                for change in changes {
                    log("INFO", &change);
                }
                Ok(())
            }
            Err(e) => {
                let message = give_up.message(&e.to_string());
                give_up.write(&message);
                Err(message)
            }
        };
    }
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal(sig, SigHandler::Handler(on_signal)) }.map_err(|e| format!("installing a {sig} handler: {e}"))?;
    }
    let bin = match &paths.bin_dir {
        BinDir::Dir(dir) => paths.on_node(dir),
        BinDir::K3sData(data) => format!("k3s's CNI bin directories under {}", paths.on_node(data)),
    };
    log("INFO", &format!("keeping tollgate-cni installed in {bin} and chained into {}", paths.on_node(&paths.conf_dir)));
    let mut last_error = String::new();
    let mut failing_since: Option<Instant> = None;
    while !STOP.load(Ordering::SeqCst) {
        match install::install_once(paths) {
            Ok(changes) => {
                for change in changes {
                    log("INFO", &change);
                }
                if failing_since.take().is_some() {
                    log("INFO", "the node has what the lock needs again");
                }
                last_error.clear();
            }
            Err(e) => {
                let error = e.to_string();
                // The same failure every few seconds is logged once.
                if error != last_error {
                    log("WARN", &error);
                    last_error = error.clone();
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !give_up.after.is_zero() && since.elapsed() >= give_up.after {
                    let message = give_up.message(&error);
                    give_up.write(&message);
                    return Err(message);
                }
            }
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    log("INFO", "stopping; the plugin stays installed and chained (tollgate-cni uninstall removes it)");
    Ok(())
}

fn status(netns: &std::path::Path) -> Result<(), String> {
    let rules = tollgate_cni::netns::enter(netns)
        .map_err(|e| e.to_string())
        .and_then(|()| tollgate_cni::nft::Nftables::open().and_then(|mut n| n.list()).map_err(|e| e.to_string()));
    let answer = match rules {
        Ok(rules) if rules.is_empty() => json!({"netns": netns.display().to_string(), "locked": false}),
        Ok(rules) => {
            let dropped = |chain: Chain| {
                let tag = drop_tag(chain);
                rules.iter().find(|r| r.tag.as_deref() == Some(tag.as_str())).and_then(|r| r.packets)
            };
            json!({
                "netns": netns.display().to_string(),
                "locked": true,
                "rules": rules.iter().map(|r| json!({"chain": r.chain, "tag": r.tag, "packets": r.packets})).collect::<Vec<_>>(),
                "droppedPackets": {"output": dropped(Chain::Output), "input": dropped(Chain::Input)},
            })
        }
        Err(e) => return Err(e),
    };
    println!("{answer}");
    Ok(())
}

/// One JSON log line on stderr (the installer's log; the plugin itself speaks only CNI on stdout).
fn log(level: &str, message: &str) {
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    eprintln!("{}", json!({"ts": ts, "level": level, "target": "tollgate_cni", "message": message}));
}
