//! The names the webhook writes and the proxy, the CNI plugin and `tollgate check` read: annotations, labels,
//! containers, volumes, environment variables and paths. One definition each; every side imports it.

/// The opt-out: `false` asks tollgate to leave the pod alone (honoured only where the policy allows it).
pub const ANNOTATION_INJECT: &str = "tollgate.dev/inject";
pub const ANNOTATION_ANALYSIS_ID: &str = "tollgate.dev/analysis-id";
pub const ANNOTATION_PROJECT_ID: &str = "tollgate.dev/project-id";
pub const ANNOTATION_CREDENTIALS_SECRET: &str = "tollgate.dev/credentials-secret";
pub const ANNOTATION_STATUS: &str = "tollgate.dev/status";
/// Every change tollgate made to the pod, one per line, as its creator's warnings listed them: for whoever
/// reads the pod later (a controller's warnings are read by nobody).
pub const ANNOTATION_CHANGES: &str = "tollgate.dev/changes";
/// The contract with the tollgate-cni plugin ([`crate::egress_lock::EgressLock`]): on every hardened pod when
/// the policy says `proxy.egressLock: required`, and on no other pod.
pub const ANNOTATION_EGRESS_LOCK: &str = "tollgate.dev/egress-lock";
/// kubectl's choice of container for `exec`, `attach` and `logs` without `-c` (else the first container).
pub const ANNOTATION_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// The pod's annotations under tollgate's prefix that are not tollgate's to write: the opt-out and the identity
/// annotations (checked, and trusted only from trusted users). Every other one is tollgate's.
pub const INPUT_ANNOTATIONS: [&str; 4] = [ANNOTATION_INJECT, ANNOTATION_ANALYSIS_ID, ANNOTATION_PROJECT_ID, ANNOTATION_CREDENTIALS_SECRET];
/// The annotations that say which analysis a pod belongs to: only trusted users may set them.
pub const IDENTITY_ANNOTATIONS: [&str; 3] = [ANNOTATION_ANALYSIS_ID, ANNOTATION_PROJECT_ID, ANNOTATION_CREDENTIALS_SECRET];
/// Labels and annotations under this prefix are tollgate's: set at admission, never changed after.
pub const OWNED_PREFIX: &str = "tollgate.dev/";

pub const LABEL_INJECTED: &str = "tollgate.dev/injected";
pub const LABEL_ANALYSIS_ID: &str = "tollgate.dev/analysis-id";
pub const LABEL_PROJECT_ID: &str = "tollgate.dev/project-id";

pub const SIDECAR_NAME: &str = "tollgate-proxy";
/// The init container that checks, as a user other than the proxy's, that the egress lock is in place.
pub const LOCK_CHECK_NAME: &str = "tollgate-lock-check";
/// The containers tollgate renders; no app or init container may carry these names.
pub const TOLLGATE_CONTAINERS: [&str; 2] = [SIDECAR_NAME, LOCK_CHECK_NAME];
/// The ServiceAccount admission plugin's token volume, `kube-api-access-<suffix>`, which tollgate removes.
pub const API_ACCESS_VOLUME_PREFIX: &str = "kube-api-access-";
pub const VOLUME_TMP: &str = "tollgate-tmp";
pub const VOLUME_CONFIG: &str = "tollgate-proxy-config";
pub const VOLUME_CREDENTIALS: &str = "tollgate-proxy-credentials";

/// Where the proxy finds its route table, mounted from the policy's ConfigMap.
pub const CONFIG_DIR: &str = "/etc/tollgate/proxy";
/// Where the proxy finds the analysis' credentials, mounted from its Secret (readable by the proxy alone).
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/tollgate";
/// Where the proxy image has its binary (docker/rootfs.sh).
pub const PROXY_BINARY: &str = "/usr/local/bin/tollgate-proxy";

/// The app's way out: the proxy's egress URL, set in every app container.
pub const ENV_EGRESS_URL: &str = "TOLLGATE_EGRESS_URL";
/// The proxy's env with the names `proxy.egressHostnames` rendered for the pod, comma-separated.
pub const ENV_EGRESS_HOSTNAMES: &str = "TOLLGATE_EGRESS_HOSTNAMES";
/// The proxy's env with the pod's analysis and project ids (from the identity annotations).
pub const ENV_ANALYSIS_ID: &str = "TOLLGATE_ANALYSIS_ID";
pub const ENV_PROJECT_ID: &str = "TOLLGATE_PROJECT_ID";
/// The proxy's listeners, as the webhook renders them from the policy's ports.
pub const ENV_EGRESS_LISTEN: &str = "TOLLGATE_EGRESS_LISTEN";
pub const ENV_INGRESS_LISTEN: &str = "TOLLGATE_INGRESS_LISTEN";
pub const ENV_ADMIN_LISTEN: &str = "TOLLGATE_ADMIN_LISTEN";
/// The proxy's env with the digest of the policy it was rendered from (`Policy::digest`, as the status
/// annotation records it): the proxy exports it as `tollgate_proxy_info{policy}`, which the chart's
/// `TollgateStaleProxies` alert compares with the webhook's `tollgate_webhook_policy_info`.
pub const ENV_POLICY_DIGEST: &str = "TOLLGATE_POLICY_DIGEST";

/// The egress lock's installer (`tollgate-cni install`, the DaemonSet): its settings, which `tollgate check`
/// reads back from the DaemonSet to say where it looked on each node.
pub const ENV_CNI_BIN_DIR: &str = "TOLLGATE_CNI_BIN_DIR";
pub const ENV_CNI_CONF_DIR: &str = "TOLLGATE_CNI_CONF_DIR";
pub const ENV_CNI_HOST_ROOT: &str = "TOLLGATE_CNI_HOST_ROOT";
pub const ENV_CNI_VERIFY_BIN_DIR: &str = "TOLLGATE_CNI_VERIFY_BIN_DIR";
pub const ENV_CNI_PLATFORM: &str = "TOLLGATE_CNI_PLATFORM";
pub const ENV_CNI_K3S_DATA_DIR: &str = "TOLLGATE_CNI_K3S_DATA_DIR";
/// The installer's defaults: the node's directories as the DaemonSet mounts them under /host.
pub const DEFAULT_CNI_BIN_DIR: &str = "/host/opt/cni/bin";
pub const DEFAULT_CNI_CONF_DIR: &str = "/host/etc/cni/net.d";
/// The label that selects the egress lock's DaemonSet and its pods (chart and manifests/optional/cni.yaml).
pub const CNI_SELECTOR: &str = "app.kubernetes.io/name=tollgate-cni";

/// The proxy's ports when neither the policy nor the route table chooses others (the default policy's
/// `proxy.egressPort`, `ingressPort` and `adminPort`; a test checks the two agree).
pub const DEFAULT_EGRESS_PORT: u16 = 15001;
pub const DEFAULT_INGRESS_PORT: u16 = 15006;
pub const DEFAULT_ADMIN_PORT: u16 = 15021;

/// tollgate's release: the webhook records it on every pod it hardens, `tollgate check --proxy` compares it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
