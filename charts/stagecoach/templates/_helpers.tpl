{{/* The chart's name. */}}
{{- define "stagecoach.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: object names start with it. */}}
{{- define "stagecoach.fullname" -}}
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

{{- define "stagecoach.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "stagecoach.labels" -}}
helm.sh/chart: {{ include "stagecoach.chart" . }}
{{ include "stagecoach.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stagecoach
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "stagecoach.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stagecoach.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "stagecoach.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stagecoach.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest (tag defaults to the appVersion). */}}
{{- define "stagecoach.imageRef" -}}
{{- $img := index . 0 }}
{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Leader election is on when asked for or when more than one replica runs. */}}
{{- define "stagecoach.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/*
The namespace the operator watches, or "" for all. The operator binary takes one
namespace (STAGECOACH_WATCH_NAMESPACE), so more than one is refused here rather than
installed half-working.
*/}}
{{- define "stagecoach.watchNamespace" -}}
{{- $ns := .Values.watchNamespaces | default list }}
{{- if gt (len $ns) 1 }}
{{- fail (printf "watchNamespaces: the operator watches one namespace or all of them, got %d (%s); install one release per namespace" (len $ns) (join ", " $ns)) }}
{{- end }}
{{- if $ns }}{{ first $ns }}{{ end }}
{{- end }}

{{/* Namespaces that get the build-defaults LimitRange. */}}
{{- define "stagecoach.limitRangeNamespaces" -}}
{{- $ns := .Values.buildDefaults.limitRange.namespaces | default .Values.watchNamespaces | default list }}
{{- if not $ns }}
{{- fail "buildDefaults.limitRange.enabled needs buildDefaults.limitRange.namespaces or watchNamespaces" }}
{{- end }}
{{- toJson $ns }}
{{- end }}
