{{/* Names and labels shared by every template. */}}

{{- define "timbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "timbridge.fullname" -}}
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

{{- define "timbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "timbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "timbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "timbridge.labels" -}}
helm.sh/chart: {{ include "timbridge.chart" . }}
{{ include "timbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: webhook-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The auditor's pods: a name of their own, outside the bridge's selector and Service. */}}
{{- define "timbridge.auditSelectorLabels" -}}
app.kubernetes.io/name: {{ include "timbridge.name" . }}-audit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "timbridge.auditLabels" -}}
helm.sh/chart: {{ include "timbridge.chart" . }}
{{ include "timbridge.auditSelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: auditor
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "timbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "timbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the callback token and broker credentials. */}}
{{- define "timbridge.secretName" -}}
{{- default (include "timbridge.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "timbridge.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Shutdown timing. The bridge exits at most shutdown.timeoutSeconds after SIGTERM (the delay
included); the kubelet's SIGKILL must come later, so the grace period adds a margin.
*/}}
{{- define "timbridge.terminationGracePeriodSeconds" -}}
{{- if ge (int .Values.shutdown.delaySeconds) (int .Values.shutdown.timeoutSeconds) }}
{{- fail "shutdown.delaySeconds must be below shutdown.timeoutSeconds (the timeout includes the delay)" }}
{{- end }}
{{- add (include "timbridge.shutdownTimeoutSeconds" . | int) (int .Values.shutdown.killMarginSeconds) }}
{{- end }}

{{/* Does the cluster (or the values) ask for a monitoring.coreos.com object of this kind? */}}
{{- define "timbridge.wantsMonitoringCRD" -}}
{{- $cfg := index . 0 }}{{- $kind := index . 1 }}{{- $root := index . 2 }}
{{- if or $cfg.enabled (and $cfg.autoDetect ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) }}true{{ end }}
{{- end }}

{{/* The environment variable holding an app's credential: (list sdkappid "TOKEN"). */}}
{{- define "timbridge.appEnv" -}}
{{- printf "TIM_APP_%d_%s" (int64 (index . 0)) (index . 1) }}
{{- end }}

{{/*
apps replaces bridge.sdkappids, bridge.allowAnySdkappid and secret.token (the bridge refuses
--config together with them); each app once, with the destination key of the sink in use.
*/}}
{{- define "timbridge.checkApps" -}}
{{- if and .Values.apps (or .Values.bridge.sdkappids .Values.bridge.allowAnySdkappid .Values.bridge.allowUnsigned .Values.secret.token) }}
{{- fail "apps replaces bridge.sdkappids, bridge.allowAnySdkappid, bridge.allowUnsigned and secret.token: set one or the other" }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.apps }}
{{- $id := toString (int64 .sdkappid) }}
{{- if hasKey $seen $id }}
{{- fail (printf "apps: sdkappid %s is listed twice" $id) }}
{{- end }}
{{- $_ := set $seen $id true }}
{{- if and .kafkaTopic (ne $.Values.bridge.sink "kafka") }}
{{- fail (printf "apps: sdkappid %s sets kafkaTopic, but bridge.sink is %s (set natsSubject)" $id $.Values.bridge.sink) }}
{{- end }}
{{- if and .natsSubject (eq $.Values.bridge.sink "kafka") }}
{{- fail (printf "apps: sdkappid %s sets natsSubject, but bridge.sink is kafka (set kafkaTopic)" $id) }}
{{- end }}
{{- end }}
{{- end }}

{{/* --shutdown-timeout: the shutdown budget, plus the forwarder's drain in spooled mode. */}}
{{- define "timbridge.shutdownTimeoutSeconds" -}}
{{- if .Values.spool.enabled }}
{{- add (int .Values.shutdown.timeoutSeconds) (int .Values.spool.drainSeconds) }}
{{- else }}
{{- int .Values.shutdown.timeoutSeconds }}
{{- end }}
{{- end }}

{{/* Spooled mode on a PersistentVolumeClaim per pod: the workload is a StatefulSet. */}}
{{- define "timbridge.statefulSet" -}}
{{- if and .Values.spool.enabled (eq .Values.spool.persistence "persistentVolumeClaim") }}true{{ end }}
{{- end }}

{{/*
The environment that carries credentials, from Secrets: each app's callback token and REST
secret key (named as the apps ConfigMap expects), the single-app token, and the sink's. The
bridge and the auditor share it.
*/}}
{{- define "timbridge.credentialEnv" -}}
{{- $secretName := include "timbridge.secretName" . -}}
{{- $sink := .Values.bridge.sink -}}
{{- $apps := .Values.apps -}}
{{- range $app := $apps }}
{{- /* Each app's credentials, from the Secrets named in values; not optional: a
missing Secret keeps the pod from starting rather than the app unverified. */}}
- name: {{ include "timbridge.appEnv" (list $app.sdkappid "TOKEN") }}
  valueFrom:
    secretKeyRef: {name: {{ $app.tokenSecret.name }}, key: {{ $app.tokenSecret.key }}}
{{- with $app.rest }}
- name: {{ include "timbridge.appEnv" (list $app.sdkappid "REST_SECRET_KEY") }}
  valueFrom:
    secretKeyRef: {name: {{ .secretKeySecret.name }}, key: {{ .secretKeySecret.key }}}
{{- end }}
{{- end }}
{{- /* The single-app token: required (a missing key keeps the pod from starting rather
than the apps unverified), unless the apps are served unsigned on purpose; optional only for
allowAnySdkappid, which is for development. */}}
{{- if not (or $apps .Values.bridge.allowUnsigned) }}
- name: TIMBRIDGE_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $secretName }}, key: token{{ if .Values.bridge.allowAnySdkappid }}, optional: true{{ end }}}
{{- end }}
{{- if eq $sink "nats" }}
- name: TIMBRIDGE_NATS_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $secretName }}, key: nats-token, optional: true}
- name: TIMBRIDGE_NATS_USER
  valueFrom:
    secretKeyRef: {name: {{ $secretName }}, key: nats-user, optional: true}
- name: TIMBRIDGE_NATS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secretName }}, key: nats-password, optional: true}
{{- end }}
{{- if eq $sink "kafka" }}
- name: TIMBRIDGE_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $secretName }}, key: kafka-sasl-username, optional: true}
- name: TIMBRIDGE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secretName }}, key: kafka-sasl-password, optional: true}
{{- end }}
{{- end }}

{{/*
bridge.sdkappids come with a callback token unless bridge.allowUnsigned says they are served
unsigned (the bridge refuses an --sdkappid without a token otherwise).
*/}}
{{- define "timbridge.checkToken" -}}
{{- if and .Values.bridge.sdkappids (not (or .Values.apps .Values.bridge.allowAnySdkappid)) }}
{{- if and .Values.bridge.allowUnsigned .Values.secret.token }}
{{- fail "bridge.allowUnsigned serves the apps without a token: remove it or secret.token" }}
{{- end }}
{{- if not (or .Values.bridge.allowUnsigned .Values.secret.token .Values.secret.existingSecret) }}
{{- fail "bridge.sdkappids needs the callback token: set secret.token (or the key \"token\" of secret.existingSecret), or bridge.allowUnsigned while the console's callback authentication is off" }}
{{- end }}
{{- end }}
{{- end }}
