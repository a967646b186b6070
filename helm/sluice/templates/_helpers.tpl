{{/* Chart name, overridable. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: release-chart, or fullnameOverride. */}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every resource of a component: (dict "ctx" . "component" "gateway"). */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "sluice.selectorLabels" . }}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* etcd endpoints as a TOML array. */}}
{{- define "sluice.etcdEndpoints" -}}
{{- $list := list -}}
{{- if .Values.etcd.enabled -}}
{{- $full := include "sluice.fullname" . -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $list = append $list (printf "http://%s-etcd-%d.%s-etcd.%s.svc:2379" $full $i $full $.Release.Namespace) -}}
{{- end -}}
{{- else -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.enabled is false: set etcd.endpoints to the external etcd cluster" -}}
{{- end -}}
{{- range .Values.etcd.endpoints -}}
{{- $list = append $list (printf "http://%s" (trimPrefix "http://" .)) -}}
{{- end -}}
{{- end -}}
{{- $list | toJson -}}
{{- end -}}

{{/* The [etcd] and [telemetry] sections every service's config file has (after its
top-level keys). */}}
{{- define "sluice.etcdConfig" -}}
[etcd]
endpoints = {{ include "sluice.etcdEndpoints" . }}
prefix = {{ .Values.etcd.prefix | quote }}
lease_ttl_secs = {{ .Values.partitionNode.leaseTtlSecs }}
connect_timeout_ms = 60000

[telemetry]
otlp_endpoint = {{ .Values.telemetry.otlpEndpoint | quote }}
metrics_interval_ms = {{ .Values.telemetry.metricsIntervalMs }}
{{- end -}}

{{/* Pod-level settings shared by every Sluice pod: (dict "ctx" . "component" "gateway"). */}}
{{- define "sluice.podCommon" -}}
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if .ctx.Values.affinity }}
  {{- toYaml .ctx.Values.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "sluice.selectorLabels" . | nindent 14 }}
{{- end }}
{{- end -}}

{{/* Container settings shared by every Sluice container: probes on the gRPC health service. */}}
{{- define "sluice.containerCommon" -}}
image: {{ include "sluice.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
securityContext:
  {{- toYaml .ctx.Values.securityContext | nindent 2 }}
ports:
  - name: grpc
    containerPort: {{ .ctx.Values.grpcPort }}
    protocol: TCP
  {{- if and (eq .component "gateway") .ctx.Values.gateway.kafka.enabled }}
  - name: kafka
    containerPort: {{ .ctx.Values.gateway.kafka.port }}
    protocol: TCP
  {{- end }}
readinessProbe:
  grpc:
    port: {{ .ctx.Values.grpcPort }}
  initialDelaySeconds: {{ .ctx.Values.probes.readinessInitialDelaySeconds }}
  periodSeconds: {{ .ctx.Values.probes.readinessPeriodSeconds }}
livenessProbe:
  grpc:
    port: {{ .ctx.Values.grpcPort }}
  initialDelaySeconds: {{ .ctx.Values.probes.livenessInitialDelaySeconds }}
  periodSeconds: {{ .ctx.Values.probes.livenessPeriodSeconds }}
  failureThreshold: {{ .ctx.Values.probes.livenessFailureThreshold }}
env:
  - name: RUST_LOG
    value: {{ .ctx.Values.logLevel | quote }}
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: POD_IP
    valueFrom:
      fieldRef:
        fieldPath: status.podIP
  {{- if eq .component "group-coordinator" }}
  # Gateways dial the active coordinator at the address it advertises in etcd.
  - name: SLUICE_ADVERTISE
    value: "$(POD_IP):{{ .ctx.Values.grpcPort }}"
  {{- end }}
  {{- if eq .component "gateway" }}
  # Each gateway registers itself under its pod address; Kafka clients are told its pod IP.
  - name: SLUICE_ADVERTISE
    value: "$(POD_IP):{{ .ctx.Values.grpcPort }}"
  {{- if .ctx.Values.gateway.kafka.enabled }}
  - name: SLUICE_GATEWAY__KAFKA_ADVERTISE
    value: "$(POD_IP):{{ .ctx.Values.gateway.kafka.port }}"
  {{- end }}
  {{- end }}
{{- end -}}
