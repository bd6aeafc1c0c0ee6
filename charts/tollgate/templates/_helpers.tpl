{{- define "tollgate.name" -}}tollgate{{- end -}}
{{- define "tollgate.webhookName" -}}tollgate-webhook{{- end -}}
{{- define "tollgate.tlsSecret" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}{{ required "certificates.existingSecret is required with mode existingSecret" .Values.certificates.existingSecret }}{{- else -}}tollgate-webhook-tls{{- end -}}
{{- end -}}
{{- define "tollgate.labels" -}}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- /* The webhook's policy: .Values.policy, and with egressLock.enabled the lock required of hardened pods
       (unless policy.proxy.egressLock says otherwise). */ -}}
{{- define "tollgate.policy" -}}
{{- $policy := deepCopy (default dict .Values.policy) -}}
{{- if .Values.egressLock.enabled -}}
{{- $proxy := default dict $policy.proxy -}}
{{- if not (hasKey $proxy "egressLock") -}}{{- $_ := set $proxy "egressLock" "required" -}}{{- end -}}
{{- $_ := set $policy "proxy" $proxy -}}
{{- end -}}
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
