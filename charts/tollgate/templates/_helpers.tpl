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

{{- /* An image reference with image.registry (if set) in place of its registry, the part before the first
       "/": (dict "root" . "ref" REF). */ -}}
{{- define "tollgate.image" -}}
{{- if .root.Values.image.registry -}}
{{ .root.Values.image.registry | trimSuffix "/" }}/{{ (splitn "/" 2 .ref)._1 }}
{{- else -}}
{{ .ref }}
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
{{- if not (hasKey $proxy "image") -}}{{- $_ := set $proxy "image" (include "tollgate.image" (dict "root" . "ref" .Values.image.proxy)) -}}{{- end -}}
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
