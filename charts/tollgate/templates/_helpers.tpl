{{- define "tollgate.name" -}}tollgate{{- end -}}
{{- define "tollgate.webhookName" -}}tollgate-webhook{{- end -}}
{{- define "tollgate.tlsSecret" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}{{ required "certificates.existingSecret is required with mode existingSecret" .Values.certificates.existingSecret }}{{- else -}}tollgate-webhook-tls{{- end -}}
{{- end -}}
{{- /* The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels):
       tollgate.labels for the release's objects, tollgate.labelsFor (dict "root" . "name" N "component" C) for
       those of one part (the webhook, the certificate jobs, the egress lock). */ -}}
{{- define "tollgate.labels" -}}
{{ include "tollgate.labelsFor" (dict "root" . "name" "tollgate") }}
{{- end -}}
{{- define "tollgate.labelsFor" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- /* The reference of one of tollgate's images, (dict "root" . "name" NAME) with NAME webhook, certs, cni,
       proxy or ctl: image.NAME, with image.registry (if set) in place of its registry (the part before the first
       "/"), and pinned by image.digests.NAME (if set): REPO:TAG@sha256:…. An image.NAME already pinned by a
       digest stays as it is when image.digests.NAME is that digest and is refused when it is another. */ -}}
{{- define "tollgate.image" -}}
{{- $ref := required (printf "image.%s is required" .name) (index .root.Values.image .name) -}}
{{- if .root.Values.image.registry -}}
{{- $ref = printf "%s/%s" (.root.Values.image.registry | trimSuffix "/") (splitn "/" 2 $ref)._1 -}}
{{- end -}}
{{- $digest := get (default dict .root.Values.image.digests) .name -}}
{{- if not $digest -}}
{{ $ref }}
{{- else if contains "@" $ref -}}
{{- if not (hasSuffix (printf "@%s" $digest) $ref) -}}
{{- fail (printf "image.%s (%s) is pinned by another digest than image.digests.%s (%s): give one of them" .name $ref .name $digest) -}}
{{- end -}}
{{ $ref }}
{{- else -}}
{{ $ref }}@{{ $digest }}
{{- end -}}
{{- end -}}

{{- /* Where tollgate's own pods (the webhook, the certificate jobs) may run, and what they carry. */ -}}
{{- define "tollgate.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- /* The webhook's policy: .Values.policy, with the proxy image of image.proxy (unless policy.proxy.image
       names one), and with egressLock.enabled the lock required of hardened pods (unless policy.proxy.egressLock
       says otherwise). */ -}}
{{- define "tollgate.policy" -}}
{{- $policy := deepCopy (default dict .Values.policy) -}}
{{- $proxy := default dict $policy.proxy -}}
{{- if not (hasKey $proxy "image") -}}{{- $_ := set $proxy "image" (include "tollgate.image" (dict "root" . "name" "proxy")) -}}{{- end -}}
{{- if and .Values.egressLock.enabled (not (hasKey $proxy "egressLock")) -}}{{- $_ := set $proxy "egressLock" "required" -}}{{- end -}}
{{- $_ := set $policy "proxy" $proxy -}}
{{- toYaml $policy -}}
{{- end -}}

{{- /* What tollgate-certs may do with Secrets: create them (RBAC cannot restrict create to names), and read
       and replace only its two. */ -}}
{{- define "tollgate.certsSecretRules" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [tollgate-webhook-tls, tollgate-webhook-ca]
  verbs: [get, update]
{{- end -}}

{{- /* What tollgate-certs may do with webhook configurations: read and replace the release's own. */ -}}
{{- define "tollgate.certsWebhookRules" -}}
- apiGroups: [admissionregistration.k8s.io]
  resources: [mutatingwebhookconfigurations]
  resourceNames: [{{ include "tollgate.name" . }}]
  verbs: [get, update]
{{- end -}}

{{- /* The analysis namespaces as a YAML map of name to "analysis", for `helm test`'s Roles. */ -}}
{{- define "tollgate.testNamespaces" -}}
{{- range .Values.analysisNamespaces }}
{{ .name }}: analysis
{{- end }}
{{- end -}}

{{- /* The pods of the analysis namespaces that are tollgate's: selection.podSelector (a LabelSelector), {} for
       every pod. */ -}}
{{- define "tollgate.podSelector" -}}
{{- with .Values.selection.podSelector -}}
{{ toYaml . }}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{- /* Argo CD sync waves (argocd.argoproj.io/sync-wave) of the chart's objects that are not Helm hooks; Argo CD
       applies a wave only once every object of the one before is healthy, and deletes in the reverse order
       (waiting for each wave to be gone). Helm and Flux ignore the annotation. Hooks keep their
       helm.sh/hook-weight, which Argo CD reads as their wave within PreSync and PostSync. README.md, GitOps.
       config       -2  ServiceAccounts, RBAC, ConfigMaps, NetworkPolicies, the ResourceQuota
       certificates -1  cert-manager's Issuers and Certificates (healthy once the Secret is issued)
       workloads     0  the webhook's Deployment, Service and PodDisruptionBudget, the renewal CronJob, monitoring
       guard         1  the pod guard (before any pod is hardened; gone only after the webhook configuration)
       webhook       2  the MutatingWebhookConfiguration: registered once its Deployment serves, removed first
       require       3  the require-hardening policy (kept on deletion: helm.sh/resource-policy keep)
       egressLock    4  the egress lock's DaemonSet: a node that cannot have it does not hold back the rest
       Use: annotations: {{- include "tollgate.wave" "config" | nindent 4 }} */ -}}
{{- define "tollgate.wave" -}}
{{- $waves := dict "config" "-2" "certificates" "-1" "workloads" "0" "guard" "1" "webhook" "2" "require" "3" "egressLock" "4" -}}
argocd.argoproj.io/sync-wave: {{ required (printf "no sync wave %q" .) (get $waves .) | quote }}
{{- end -}}

{{- /* Where the egress lock's installer finds the node's CNI directories, per egressLock.platform (each checked
       against the project's own code and documentation; cni/README.md): a dict of
         conf      the runtime's configuration directory (a node path)
         bin       its plugin directory, or
         k3sData   k3s's data directory, whose bin directories the installer finds itself
         mounts    node paths the DaemonSet mounts (each at /host<path>)
         verify    whether the installer checks that the configuration's plugin is in the bin directory
                   (not when binDir is given: the admin named it, and a runtime may search several)
         quota     whether the platform admits system-node-critical pods outside kube-system only with a
                   ResourceQuota (GKE) */ -}}
{{- define "tollgate.egressLock.layout" -}}
{{- $e := .Values.egressLock -}}
{{- $presets := dict
      "kubeadm"  (dict "conf" "/etc/cni/net.d" "bin" "/opt/cni/bin")
      "rke2"     (dict "conf" "/etc/cni/net.d" "bin" "/opt/cni/bin")
      "microk8s" (dict "conf" "/var/snap/microk8s/current/args/cni-network" "bin" "/var/snap/microk8s/current/opt/cni/bin" "root" "/var/snap/microk8s")
      "k3s"      (dict "conf" "/var/lib/rancher/k3s/agent/etc/cni/net.d" "k3sData" "/var/lib/rancher/k3s/data")
      "gke"      (dict "conf" "/etc/cni/net.d" "bin" "/home/kubernetes/bin" "quota" true)
      "custom"   (dict) -}}
{{- $preset := get $presets $e.platform -}}
{{- if not (hasKey $presets $e.platform) -}}
{{- fail (printf "egressLock.platform %q: one of kubeadm, rke2, microk8s, k3s, gke, custom" $e.platform) -}}
{{- end -}}
{{- if and (eq $e.platform "custom") (not (and $e.binDir $e.confDir)) -}}
{{- fail "egressLock.platform custom needs egressLock.binDir and egressLock.confDir (the node's container runtime's CNI bin_dir and conf_dir)" -}}
{{- end -}}
{{- $conf := $e.confDir | default $preset.conf -}}
{{- $layout := dict "conf" $conf "verify" (not $e.binDir) "quota" (or $e.resourceQuota.enabled (default false $preset.quota)) -}}
{{- if $e.binDir -}}
{{- $_ := set $layout "bin" $e.binDir -}}
{{- else if $preset.k3sData -}}
{{- $_ := set $layout "k3sData" $preset.k3sData -}}
{{- else -}}
{{- $_ := set $layout "bin" $preset.bin -}}
{{- end -}}
{{- if and $preset.root (not $e.binDir) (not $e.confDir) -}}
{{- /* microk8s: its snap's data directory whole, so that `current` is followed to the revision in use after a
       snap refresh (a mount of current/... would stay on the old revision). */ -}}
{{- $_ := set $layout "mounts" (list (dict "name" "microk8s-data" "path" $preset.root)) -}}
{{- else -}}
{{- $_ := set $layout "mounts" (list (dict "name" (ternary "k3s-data" "cni-bin" (hasKey $layout "k3sData")) "path" (default $layout.k3sData $layout.bin)) (dict "name" "cni-conf" "path" $conf)) -}}
{{- end -}}
{{- toYaml $layout -}}
{{- end -}}
