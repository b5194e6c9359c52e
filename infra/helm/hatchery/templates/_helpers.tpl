{{- define "hatchery.labels" -}}
app.kubernetes.io/name: hatchery
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "hatchery.selector" -}}
app.kubernetes.io/name: hatchery
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hatchery.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: http
periodSeconds: {{ .probe.periodSeconds }}
{{- with .probe.timeoutSeconds }}
timeoutSeconds: {{ . }}
{{- end }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}
