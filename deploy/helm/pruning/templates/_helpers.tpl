{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "pruning.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name when it holds the chart name. */}}
{{- define "pruning.fullname" -}}
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

{{- define "pruning.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pruning.labels" -}}
helm.sh/chart: {{ include "pruning.chart" . }}
{{ include "pruning.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pruning.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pruning.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Image reference; call with (dict "image" .Values.server.image "root" .). */}}
{{- define "pruning.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{- define "pruning.redisName" -}}
{{- printf "%s-redis" (include "pruning.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pruning.claimName" -}}
{{- default (printf "%s-artifacts" (include "pruning.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Environment shared by the server and the workers (names from pruning_server.config.Settings). */}}
{{- define "pruning.env" -}}
- name: PRUNING_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:%d/0" (include "pruning.redisName" .) (int .Values.redis.port) | quote }}
{{- else if .Values.externalRedis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else }}
  value: {{ required "externalRedis.url (or externalRedis.existingSecret) is required when redis.enabled=false" .Values.externalRedis.url | quote }}
{{- end }}
- name: PRUNING_STATE_DIR
  value: {{ .Values.persistence.mountPath | quote }}
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The artifact volume, mounted by the server and the workers. */}}
{{- define "pruning.artifactVolume" -}}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "pruning.claimName" . }}
{{- end }}
