{{/* The chart's name, or nameOverride. */}}
{{- define "embed.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource names: the release name alone when it already contains the chart's name. */}}
{{- define "embed.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "embed.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "embed.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "embed.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "embed.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "embed.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret holding the API key: an existing one, or the chart's. */}}
{{- define "embed.apiKeySecret" -}}
{{- .Values.apiKey.existingSecret | default (include "embed.fullname" .) -}}
{{- end -}}

{{/*
The server's TOML. Both the ConfigMap and the Deployment's checksum/config annotation use
it, so a change to it rolls the pods. Keys absent or empty in the values are left out: the
server's defaults apply.
*/}}
{{- define "embed.serverConfig" -}}
{{- $s := .Values.server -}}
{{- if not (hasKey .Values.models $s.default_model) -}}
{{- fail (printf "server.default_model %q is not one of .Values.models" $s.default_model) -}}
{{- end -}}
# Rendered by the embed chart from .Values.server and .Values.models. The listening address
# is the image's (--bind 0.0.0.0:8080); the API key comes from EMBED_API_KEY.
default_model = {{ $s.default_model | quote }}
{{- with $s.preload }}
preload = {{ toJson . }}
{{- end }}
device = {{ $s.device | default "cpu" | quote }}
{{- with $s.dtype }}
dtype = {{ quote . }}
{{- end }}
{{- with $s.max_models }}
max_models = {{ int . }}
{{- end }}
{{- with $s.memory_budget }}
memory_budget = {{ quote . }}
{{- end }}
{{- with $s.idle_ttl }}
idle_ttl = {{ int . }}
{{- end }}
{{- with $s.max_batch_tokens }}
max_batch_tokens = {{ int . }}
{{- end }}
{{- with $s.max_inputs }}
max_inputs = {{ int . }}
{{- end }}
{{- with $s.max_body_bytes }}
max_body_bytes = {{ int . }}
{{- end }}
{{- with $s.max_concurrent }}
max_concurrent = {{ int . }}
{{- end }}
{{- with $s.max_connections }}
max_connections = {{ int . }}
{{- end }}
{{- with $s.request_timeout }}
request_timeout = {{ int . }}
{{- end }}
{{- with $s.header_read_timeout }}
header_read_timeout = {{ . }}
{{- end }}
{{- with $s.keep_alive_timeout }}
keep_alive_timeout = {{ . }}
{{- end }}
shutdown_deadline = {{ int $s.shutdown_deadline }}
{{- if $s.no_truncate }}
no_truncate = true
{{- end }}
{{- if $s.allow_degraded_start }}
allow_degraded_start = true
{{- end }}
{{- range $name, $m := .Values.models }}
[models.{{ $name | quote }}]
source = {{ required (printf "models.%s.source is required" $name) $m.source | quote }}
{{- with $m.device }}
device = {{ quote . }}
{{- end }}
{{- with $m.dtype }}
dtype = {{ quote . }}
{{- end }}
{{- with $m.max_seq_length }}
max_seq_length = {{ int . }}
{{- end }}
{{- with $m.pooling }}
pooling = {{ quote . }}
{{- end }}
{{- if hasKey $m "normalize" }}
normalize = {{ $m.normalize }}
{{- end }}
{{- with $m.query_prefix }}
query_prefix = {{ quote . }}
{{- end }}
{{- with $m.document_prefix }}
document_prefix = {{ quote . }}
{{- end }}
{{- with $m.ttl }}
ttl = {{ int . }}
{{- end }}
{{- if hasKey $m "pinned" }}
pinned = {{ $m.pinned }}
{{- end }}
{{- end }}
{{- end -}}
