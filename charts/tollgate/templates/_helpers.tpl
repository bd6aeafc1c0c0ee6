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
