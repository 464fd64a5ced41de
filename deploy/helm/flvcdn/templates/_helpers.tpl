{{/*
Name of the application (app.kubernetes.io/name).
*/}}
{{- define "flvcdn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every object name: the release name unless overridden. 40 characters
leave room for the longest suffix ("-origin-janitor", "-nats-headless") within
the 63 allowed for a Service or label value.
*/}}
{{- define "flvcdn.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "flvcdn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of every object. Call with (dict "ctx" $ "component" "edge").
*/}}
{{- define "flvcdn.labels" -}}
helm.sh/chart: {{ include "flvcdn.chart" .ctx }}
{{ include "flvcdn.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: flvcdn
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels: stable for the life of a release (never add version here).
*/}}
{{- define "flvcdn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flvcdn.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
The janitor's label selector of origin pods, as a string.
*/}}
{{- define "flvcdn.originSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=origin" (include "flvcdn.name" .) .Release.Name -}}
{{- end -}}

{{- define "flvcdn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-origin" (include "flvcdn.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "flvcdn.janitorLeaseName" -}}
{{- default (printf "%s-origin-janitor" (include "flvcdn.fullname" .)) .Values.origin.janitor.leaseName -}}
{{- end -}}

{{- define "flvcdn.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "flvcdn.publishSecretName" -}}
{{- default (printf "%s-publish" (include "flvcdn.fullname" .)) .Values.publish.existingSecret -}}
{{- end -}}

{{- define "flvcdn.redisSecretName" -}}
{{- default (printf "%s-redis" (include "flvcdn.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/*
A random secret value that survives upgrades: reuse the value already stored
in the cluster, if any. Call with (dict "ctx" $ "name" "x" "key" "k").
*/}}
{{- define "flvcdn.stableRandom" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum 32 | b64enc -}}
{{- end -}}
{{- end -}}

{{/*
Environment shared by origin and edge: pod identity from the downward API, the
NATS URL and the Redis URL. Credentials only ever come from Secrets.
*/}}
{{- define "flvcdn.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: FLVCDN_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.api.existingSecret }}
- name: FLVCDN_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.api.existingSecretKey }}
{{- end }}
{{- if .Values.nats.enabled }}
- name: FLVCDN_NATS_URL
  value: {{ printf "nats://%s-nats:4222" (include "flvcdn.fullname" .) | quote }}
{{- else if .Values.nats.external.existingSecret }}
- name: FLVCDN_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.external.existingSecret }}
      key: {{ .Values.nats.external.existingSecretKey }}
{{- else }}
- name: FLVCDN_NATS_URL
  value: {{ required "nats.external.url or nats.external.existingSecret is required when nats.enabled is false" .Values.nats.external.url | quote }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.nats.external.credsSecret }}
- name: FLVCDN_NATS_CREDS
  value: /etc/flvcdn/nats-creds/{{ .Values.nats.external.credsSecretKey }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.nats.external.tlsCASecret }}
- name: FLVCDN_NATS_TLS_CA
  value: /etc/flvcdn/nats-ca/{{ .Values.nats.external.tlsCASecretKey }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "flvcdn.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretKey }}
- name: FLVCDN_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" (include "flvcdn.fullname" .) | quote }}
{{- else if .Values.redis.external.existingSecret }}
- name: FLVCDN_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
- name: FLVCDN_REDIS_URL
  value: {{ required "redis.external.url or redis.external.existingSecret is required when redis.enabled is false" .Values.redis.external.url | quote }}
{{- end }}
{{- end -}}

{{/*
Soft anti-affinity spreading a component over nodes; used when the user gives
no affinity. Call with (dict "ctx" $ "component" "edge").
*/}}
{{- define "flvcdn.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "flvcdn.selectorLabels" . | nindent 12 }}
{{- end -}}

{{/*
Scheduling block of a pod spec. Call with (dict "ctx" $ "component" "edge" "v" .Values.edge).
Replicated components are spread over nodes unless the user sets an affinity.
*/}}
{{- define "flvcdn.scheduling" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .v.affinity }}
affinity:
  {{- toYaml .v.affinity | nindent 2 }}
{{- else if ne .component "redis" }}
affinity:
  {{- include "flvcdn.spreadAffinity" . | nindent 2 }}
{{- end }}
{{- with .v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
NOTES.txt: shell lines that set a variable to host:port of a Service.
Call with (dict "ctx" $ "var" "EDGE" "component" "edge" "svc" .Values.edge.service "local" 8080).
*/}}
{{- define "flvcdn.notesAddress" -}}
{{- $name := printf "%s-%s" (include "flvcdn.fullname" .ctx) .component -}}
{{- $ns := .ctx.Release.Namespace -}}
{{- if eq .svc.type "LoadBalancer" }}
# (the load balancer address may take a minute to appear)
{{ .var }}=$(kubectl get svc -n {{ $ns }} {{ $name }} -o jsonpath='{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}'):{{ .svc.port }}
{{- else if eq .svc.type "NodePort" }}
{{ .var }}=$(kubectl get nodes -o jsonpath='{.items[0].status.addresses[0].address}'):$(kubectl get svc -n {{ $ns }} {{ $name }} -o jsonpath='{.spec.ports[0].nodePort}')
{{- else }}
kubectl port-forward -n {{ $ns }} svc/{{ $name }} {{ .local }}:{{ .svc.port }} &
{{ .var }}=127.0.0.1:{{ .local }}
{{- end }}
{{- end -}}

{{/*
Read-only mounts of the external NATS credentials and CA Secrets, for both
Deployments: natsMounts goes under volumeMounts, natsVolumes under volumes.
*/}}
{{- define "flvcdn.natsMounts" -}}
{{- if and (not .Values.nats.enabled) .Values.nats.external.credsSecret }}
- name: nats-creds
  mountPath: /etc/flvcdn/nats-creds
  readOnly: true
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.nats.external.tlsCASecret }}
- name: nats-ca
  mountPath: /etc/flvcdn/nats-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "flvcdn.natsVolumes" -}}
{{- if and (not .Values.nats.enabled) .Values.nats.external.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ .Values.nats.external.credsSecret }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.nats.external.tlsCASecret }}
- name: nats-ca
  secret:
    secretName: {{ .Values.nats.external.tlsCASecret }}
{{- end }}
{{- end -}}

{{/*
Callback settings of one component: (dict "ctx" . "url" URL). Nothing when URL is
empty (the binaries refuse a hook secret without a hook URL).
*/}}
{{- define "flvcdn.hookEnv" -}}
{{- $v := .ctx.Values.hooks }}
{{- if .url }}
- name: FLVCDN_HOOK_URL
  value: {{ .url | quote }}
- name: FLVCDN_HOOK_TIMEOUT
  value: {{ $v.timeout | quote }}
- name: FLVCDN_HOOK_FAIL_OPEN
  value: {{ $v.failOpen | toString | quote }}
{{- with $v.existingSecret }}
- name: FLVCDN_HOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.existingSecretKey }}
{{- end }}
{{- end }}
{{- end -}}
