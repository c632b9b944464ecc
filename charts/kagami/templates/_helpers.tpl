{{- define "kagami.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kagami.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kagami.labels" -}}
app.kubernetes.io/name: {{ include "kagami.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kagami.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kagami.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kagami.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kagami.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kagami.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kagami.mirrorUrl" -}}
{{- printf "http://127.0.0.1:%v" .Values.ports.mirror -}}
{{- end -}}

{{/*
The config file: the user's `config` map plus what the chart derives. One map, rendered mechanically.
The derived keys win (sprig `merge`: the first map's keys win): the mounts, probes and hosts.toml are built
from the same values, so `config` must not move them (values.schema.json rejects them too).
Listeners: the peer endpoint on `[::]` (every IPv4 and IPv6 address; IPv4 only where the host has no IPv6)
and libp2p on both families, so IPv6-primary and dual-stack nodes work.
*/}}
{{- define "kagami.config" -}}
{{- $derived := dict
  "containerdAddress" .Values.containerd.socket
  "containerdNamespace" .Values.containerd.namespace
  "containerdContentDir" .Values.containerd.contentDir
  "mirrorAddress" (printf "127.0.0.1:%v" .Values.ports.mirror)
  "peerAddress" (printf "[::]:%v" .Values.ports.peer)
  "p2pAddress" (list (printf "/ip4/0.0.0.0/tcp/%v" .Values.ports.p2p) (printf "/ip6/::/tcp/%v" .Values.ports.p2p))
  "bootstrap" (list (printf "dns:%s-bootstrap.%s.svc.%s:%v" (include "kagami.fullname" .) .Release.Namespace .Values.clusterDomain .Values.ports.p2p))
  "registries" .Values.registries
  "stateDir" .Values.stateDir
  "pskFile" (ternary "/etc/kagami/psk/psk" "" .Values.psk.enabled) -}}
{{- toYaml (merge $derived (deepCopy .Values.config)) -}}
{{- end -}}

{{/* Every kagami container: root (the socket is root:root 0660) with nothing else. */}}
{{- define "kagami.securityContext" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "kagami.configureArgs" -}}
- configure
- --config-path
- {{ .Values.containerd.configPath }}
- --mirror-url
- {{ include "kagami.mirrorUrl" . }}
{{- if .Values.registries }}
- --registries
{{- range .Values.registries }}
- {{ . }}
{{- end }}
{{- end }}
{{- if .Values.allRegistries }}
- --all-registries
{{- end }}
{{- end -}}

{{/* The Secret holding the PSK: the user's, or the one the chart creates. */}}
{{- define "kagami.pskSecretName" -}}
{{- default (printf "%s-psk" (include "kagami.fullname" .)) .Values.psk.secretName -}}
{{- end -}}
