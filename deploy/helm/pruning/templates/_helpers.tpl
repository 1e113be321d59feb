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

{{/* Environment shared by the server and the workers (names from pruning_core.settings.Settings). */}}
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
- name: PRUNING_ARTIFACT_STORE
  value: {{ .Values.artifactStore.type | quote }}
{{- if eq .Values.artifactStore.type "s3" }}
- name: PRUNING_S3_ENDPOINT
  value: {{ .Values.artifactStore.s3.endpoint | quote }}
- name: PRUNING_S3_BUCKET
  value: {{ required "artifactStore.s3.bucket is required when artifactStore.type=s3" .Values.artifactStore.s3.bucket | quote }}
- name: PRUNING_S3_PREFIX
  value: {{ .Values.artifactStore.s3.prefix | quote }}
- name: PRUNING_S3_REGION
  value: {{ .Values.artifactStore.s3.region | quote }}
- name: PRUNING_S3_PART_SIZE
  value: {{ .Values.artifactStore.s3.partSize | toString | quote }}
- name: PRUNING_CACHE_MAX_BYTES
  value: {{ .Values.artifactStore.cacheMaxBytes | toString | quote }}
{{- if .Values.artifactStore.s3.existingSecret }}
- name: PRUNING_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.artifactStore.s3.existingSecret }}
      key: {{ .Values.artifactStore.s3.accessKeyIdKey }}
- name: PRUNING_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.artifactStore.s3.existingSecret }}
      key: {{ .Values.artifactStore.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The artifact volume, mounted by the server and the workers. */}}
{{/* With artifactStore.type=s3 each pod keeps only its own scratch (upload spool, input cache). */}}
{{- define "pruning.artifactVolume" -}}
- name: artifacts
{{- if eq .Values.artifactStore.type "s3" }}
  emptyDir: {}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "pruning.claimName" . }}
{{- end }}
{{- end }}
