{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The Secret holding the admin token. */}}
{{- define "tollgate.adminSecret" -}}
{{- default (printf "%s-admin" (include "tollgate.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{/* The configuration as YAML: values.config, plus state.redis when redis is enabled. */}}
{{- define "tollgate.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if .Values.redis.enabled }}
{{- $state := default (dict) (get $cfg "state") }}
{{- $_ := set $state "redis" (dict "url" "${env:REDIS_URL}" "timeout" .Values.redis.timeout "prefix" .Values.redis.prefix) }}
{{- $_ := set $cfg "state" $state }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
