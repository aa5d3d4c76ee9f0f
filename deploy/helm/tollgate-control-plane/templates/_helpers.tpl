{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "tollgate-cp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "tollgate-cp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tollgate-cp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tollgate-cp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tollgate-cp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate-cp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{/* Replicas: SQLite is one writer; several replicas need PostgreSQL and shared key and certificate. */}}
{{- define "tollgate-cp.replicas" -}}
{{- if .Values.postgresql.enabled }}
{{- if and (gt (int .Values.replicaCount) 1) (or (not .Values.signingKey.existingSecret) (not .Values.tls.existingSecret)) }}
{{- fail "replicaCount > 1 needs signingKey.existingSecret and tls.existingSecret: every replica must present the same signing key and certificate" }}
{{- end }}
{{- int .Values.replicaCount }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}
