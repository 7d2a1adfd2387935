{{- define "dt.x" -}}
X{{ .Values.mid }}-{{ include "dt.y" . }}
{{- end -}}
{{- define "dt.y" }}  y:{{ .Chart.Name }}  {{ end -}}
