{{/*
Names are fixed, as in config/default: keymint's flags, its RBAC
(resourceNames) and its webhook configuration refer to these names, and the
CRDs and webhook configuration are cluster-wide, so one release per cluster.
*/}}

{{/* Labels Helm adds to every object, on top of the ones config/ sets. */}}
{{- define "keymint.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "keymint.imageTag" . | trunc 63 | quote }}
{{- end }}

{{/* The manager pods' labels, as config/manager selects them. */}}
{{- define "keymint.selectorLabels" -}}
app.kubernetes.io/name: keymint
app.kubernetes.io/component: manager
{{- end }}

{{- define "keymint.imageTag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "keymint.image" -}}
{{ .Values.image.repository }}:{{ include "keymint.imageTag" . }}
{{- end }}

{{/* Leader election: asked for, or needed because several replicas run. */}}
{{- define "keymint.leaderElect" -}}
{{- if or .Values.leaderElection.enable (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "keymint.certManager" -}}
{{- if eq .Values.certs.source "cert-manager" }}true{{ end }}
{{- end }}

{{/* GitLab's Token Revocation API: leak reports on, and a Secret for its token. */}}
{{- define "keymint.gitlabLeakReports" -}}
{{- if and .Values.leakReports.enable .Values.leakReports.gitlab.tokenSecret }}true{{ end }}
{{- end }}
