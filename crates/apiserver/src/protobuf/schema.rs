//! The messages kubectl 1.32 sends as protobuf, field by field: number, JSON name, type. The
//! numbers follow the upstream `generated.proto` files of Kubernetes 1.32 (they never change
//! between releases); names are the JSON names, which the protobuf names equal except where a
//! message is inlined in JSON ([`T::Inline`]: a volume's source, a probe's handler, a
//! selector's `name`).

/// A field's type.
#[derive(Clone, Copy)]
pub enum T {
    /// A string; empty is absent (Go writes every non-pointer field).
    Str,
    /// An integer whose zero means unset (a non-pointer Go field).
    Int,
    /// An integer that means what it says even when zero (a pointer Go field: `replicas: 0`).
    IntSet,
    /// A boolean whose `false` means unset.
    Bool,
    /// A boolean that means what it says even when false.
    BoolSet,
    Strings,
    /// Repeated integers, packed or not.
    Ints,
    Msg(&'static Msg),
    Msgs(&'static Msg),
    /// A message whose fields JSON puts in the parent.
    Inline(&'static Msg),
    StrMap,
    /// `map<string, bytes>`, as base64 strings in JSON.
    BytesMap,
    QuantityMap,
    Quantity,
    Time,
    IntOrString,
    /// Read and dropped (a create's `status`, `managedFields`).
    Skip,
}

pub struct F {
    pub n: u64,
    pub name: &'static str,
    pub t: T,
}

pub struct Msg {
    pub name: &'static str,
    pub fields: &'static [F],
}

macro_rules! msg {
    ($id:ident { $($n:literal $name:literal $t:expr),* $(,)? }) => {
        // Named as the upstream messages are.
        #[allow(non_upper_case_globals)]
        pub static $id: Msg = Msg {
            name: stringify!($id),
            fields: &[$(F { n: $n, name: $name, t: $t }),*],
        };
    };
}

use T::*;

// meta/v1
msg!(ObjectMeta { 1 "name" Str, 2 "generateName" Str, 3 "namespace" Str, 4 "selfLink" Skip,
    5 "uid" Str, 6 "resourceVersion" Str, 7 "generation" Int, 8 "creationTimestamp" Time,
    9 "deletionTimestamp" Time, 10 "deletionGracePeriodSeconds" IntSet, 11 "labels" StrMap,
    12 "annotations" StrMap, 13 "ownerReferences" Msgs(&OwnerReference),
    14 "finalizers" Strings, 17 "managedFields" Skip });
msg!(OwnerReference { 1 "kind" Str, 3 "name" Str, 4 "uid" Str, 5 "apiVersion" Str,
    6 "controller" BoolSet, 7 "blockOwnerDeletion" BoolSet });
msg!(LabelSelector { 1 "matchLabels" StrMap, 2 "matchExpressions" Msgs(&LabelSelectorRequirement) });
msg!(LabelSelectorRequirement { 1 "key" Str, 2 "operator" Str, 3 "values" Strings });

// core/v1
msg!(ConfigMap { 1 "metadata" Msg(&ObjectMeta), 2 "data" StrMap, 3 "binaryData" BytesMap,
    4 "immutable" BoolSet });
msg!(Secret { 1 "metadata" Msg(&ObjectMeta), 2 "data" BytesMap, 3 "type" Str,
    4 "stringData" StrMap, 5 "immutable" BoolSet });
msg!(Namespace { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&NamespaceSpec), 3 "status" Skip });
msg!(NamespaceSpec { 1 "finalizers" Strings });
msg!(Pod { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&PodSpec), 3 "status" Skip });
msg!(PodTemplateSpec { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&PodSpec) });
msg!(PodSpec { 1 "volumes" Msgs(&Volume), 2 "containers" Msgs(&Container), 3 "restartPolicy" Str,
    4 "terminationGracePeriodSeconds" IntSet, 5 "activeDeadlineSeconds" IntSet, 6 "dnsPolicy" Str,
    7 "nodeSelector" StrMap, 8 "serviceAccountName" Str, 9 "serviceAccount" Str, 10 "nodeName" Str,
    11 "hostNetwork" Bool, 12 "hostPID" Bool, 13 "hostIPC" Bool,
    14 "securityContext" Msg(&PodSecurityContext), 15 "imagePullSecrets" Msgs(&LocalObjectReference),
    16 "hostname" Str, 17 "subdomain" Str, 18 "affinity" Msg(&Affinity), 19 "schedulerName" Str,
    20 "initContainers" Msgs(&Container), 21 "automountServiceAccountToken" BoolSet,
    22 "tolerations" Msgs(&Toleration), 24 "priorityClassName" Str, 25 "priority" IntSet,
    27 "shareProcessNamespace" BoolSet, 29 "runtimeClassName" Str, 30 "enableServiceLinks" BoolSet,
    31 "preemptionPolicy" Str, 33 "topologySpreadConstraints" Msgs(&TopologySpreadConstraint),
    35 "setHostnameAsFQDN" BoolSet });
msg!(LocalObjectReference { 1 "name" Str });
msg!(Container { 1 "name" Str, 2 "image" Str, 3 "command" Strings, 4 "args" Strings,
    5 "workingDir" Str, 6 "ports" Msgs(&ContainerPort), 7 "env" Msgs(&EnvVar),
    8 "resources" Msg(&ResourceRequirements), 9 "volumeMounts" Msgs(&VolumeMount),
    10 "livenessProbe" Msg(&Probe), 11 "readinessProbe" Msg(&Probe), 12 "lifecycle" Msg(&Lifecycle),
    13 "terminationMessagePath" Str, 14 "imagePullPolicy" Str,
    15 "securityContext" Msg(&SecurityContext), 16 "stdin" Bool, 17 "stdinOnce" Bool, 18 "tty" Bool,
    19 "envFrom" Msgs(&EnvFromSource), 20 "terminationMessagePolicy" Str,
    22 "startupProbe" Msg(&Probe), 24 "restartPolicy" Str });
msg!(ContainerPort { 1 "name" Str, 2 "hostPort" Int, 3 "containerPort" Int, 4 "protocol" Str,
    5 "hostIP" Str });
msg!(EnvVar { 1 "name" Str, 2 "value" Str, 3 "valueFrom" Msg(&EnvVarSource) });
msg!(EnvVarSource { 1 "fieldRef" Msg(&ObjectFieldSelector),
    2 "resourceFieldRef" Msg(&ResourceFieldSelector), 3 "configMapKeyRef" Msg(&KeySelector),
    4 "secretKeyRef" Msg(&KeySelector) });
msg!(KeySelector { 1 "localObjectReference" Inline(&LocalObjectReference), 2 "key" Str,
    3 "optional" BoolSet });
msg!(ObjectFieldSelector { 1 "apiVersion" Str, 2 "fieldPath" Str });
msg!(ResourceFieldSelector { 1 "containerName" Str, 2 "resource" Str, 3 "divisor" Quantity });
msg!(EnvFromSource { 1 "prefix" Str, 2 "configMapRef" Msg(&EnvSource), 3 "secretRef" Msg(&EnvSource) });
msg!(EnvSource { 1 "localObjectReference" Inline(&LocalObjectReference), 2 "optional" BoolSet });
msg!(ResourceRequirements { 1 "limits" QuantityMap, 2 "requests" QuantityMap });
msg!(VolumeMount { 1 "name" Str, 2 "readOnly" Bool, 3 "mountPath" Str, 4 "subPath" Str,
    5 "mountPropagation" Str, 6 "subPathExpr" Str, 7 "recursiveReadOnly" Str });
msg!(Volume { 1 "name" Str, 2 "volumeSource" Inline(&VolumeSource) });
msg!(VolumeSource { 1 "hostPath" Msg(&HostPathVolumeSource), 2 "emptyDir" Msg(&EmptyDirVolumeSource),
    6 "secret" Msg(&SecretVolumeSource), 19 "configMap" Msg(&ConfigMapVolumeSource) });
msg!(HostPathVolumeSource { 1 "path" Str, 2 "type" Str });
msg!(EmptyDirVolumeSource { 1 "medium" Str, 2 "sizeLimit" Quantity });
msg!(SecretVolumeSource { 1 "secretName" Str, 2 "items" Msgs(&KeyToPath), 3 "defaultMode" IntSet,
    4 "optional" BoolSet });
msg!(ConfigMapVolumeSource { 1 "localObjectReference" Inline(&LocalObjectReference),
    2 "items" Msgs(&KeyToPath), 3 "defaultMode" IntSet, 4 "optional" BoolSet });
msg!(KeyToPath { 1 "key" Str, 2 "path" Str, 3 "mode" IntSet });
msg!(Probe { 1 "handler" Inline(&ProbeHandler), 2 "initialDelaySeconds" Int, 3 "timeoutSeconds" Int,
    4 "periodSeconds" Int, 5 "successThreshold" Int, 6 "failureThreshold" Int,
    7 "terminationGracePeriodSeconds" IntSet });
msg!(ProbeHandler { 1 "exec" Msg(&ExecAction), 2 "httpGet" Msg(&HTTPGetAction),
    3 "tcpSocket" Msg(&TCPSocketAction) });
msg!(ExecAction { 1 "command" Strings });
msg!(HTTPGetAction { 1 "path" Str, 2 "port" IntOrString, 3 "host" Str, 4 "scheme" Str,
    5 "httpHeaders" Msgs(&HTTPHeader) });
msg!(HTTPHeader { 1 "name" Str, 2 "value" Str });
msg!(TCPSocketAction { 1 "port" IntOrString, 2 "host" Str });
msg!(Lifecycle { 1 "postStart" Msg(&LifecycleHandler), 2 "preStop" Msg(&LifecycleHandler) });
msg!(LifecycleHandler { 1 "exec" Msg(&ExecAction), 2 "httpGet" Msg(&HTTPGetAction),
    3 "tcpSocket" Msg(&TCPSocketAction), 4 "sleep" Msg(&SleepAction) });
msg!(SleepAction { 1 "seconds" IntSet });
msg!(SecurityContext { 1 "capabilities" Msg(&Capabilities), 2 "privileged" BoolSet,
    4 "runAsUser" IntSet, 5 "runAsNonRoot" BoolSet, 6 "readOnlyRootFilesystem" BoolSet,
    7 "allowPrivilegeEscalation" BoolSet, 8 "runAsGroup" IntSet, 9 "procMount" Str });
msg!(PodSecurityContext { 2 "runAsUser" IntSet, 3 "runAsNonRoot" BoolSet,
    4 "supplementalGroups" Ints, 5 "fsGroup" IntSet, 6 "runAsGroup" IntSet,
    9 "fsGroupChangePolicy" Str });
msg!(Capabilities { 1 "add" Strings, 2 "drop" Strings });
msg!(Toleration { 1 "key" Str, 2 "operator" Str, 3 "value" Str, 4 "effect" Str,
    5 "tolerationSeconds" IntSet });
msg!(Affinity { 1 "nodeAffinity" Msg(&NodeAffinity), 2 "podAffinity" Msg(&PodAffinity),
    3 "podAntiAffinity" Msg(&PodAffinity) });
msg!(NodeAffinity { 1 "requiredDuringSchedulingIgnoredDuringExecution" Msg(&NodeSelector),
    2 "preferredDuringSchedulingIgnoredDuringExecution" Msgs(&PreferredSchedulingTerm) });
msg!(NodeSelector { 1 "nodeSelectorTerms" Msgs(&NodeSelectorTerm) });
msg!(NodeSelectorTerm { 1 "matchExpressions" Msgs(&NodeSelectorRequirement),
    2 "matchFields" Msgs(&NodeSelectorRequirement) });
msg!(NodeSelectorRequirement { 1 "key" Str, 2 "operator" Str, 3 "values" Strings });
msg!(PreferredSchedulingTerm { 1 "weight" IntSet, 2 "preference" Msg(&NodeSelectorTerm) });
msg!(PodAffinity { 1 "requiredDuringSchedulingIgnoredDuringExecution" Msgs(&PodAffinityTerm),
    2 "preferredDuringSchedulingIgnoredDuringExecution" Msgs(&WeightedPodAffinityTerm) });
msg!(PodAffinityTerm { 1 "labelSelector" Msg(&LabelSelector), 2 "namespaces" Strings,
    3 "topologyKey" Str, 4 "namespaceSelector" Msg(&LabelSelector), 5 "matchLabelKeys" Strings,
    6 "mismatchLabelKeys" Strings });
msg!(WeightedPodAffinityTerm { 1 "weight" IntSet, 2 "podAffinityTerm" Msg(&PodAffinityTerm) });
msg!(TopologySpreadConstraint { 1 "maxSkew" IntSet, 2 "topologyKey" Str, 3 "whenUnsatisfiable" Str,
    4 "labelSelector" Msg(&LabelSelector), 5 "minDomains" IntSet, 6 "nodeAffinityPolicy" Str,
    7 "nodeTaintsPolicy" Str, 8 "matchLabelKeys" Strings });
msg!(Service { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&ServiceSpec), 3 "status" Skip });
msg!(ServiceSpec { 1 "ports" Msgs(&ServicePort), 2 "selector" StrMap, 3 "clusterIP" Str, 4 "type" Str,
    5 "externalIPs" Strings, 7 "sessionAffinity" Str, 8 "loadBalancerIP" Str,
    9 "loadBalancerSourceRanges" Strings, 10 "externalName" Str, 11 "externalTrafficPolicy" Str,
    12 "healthCheckNodePort" Int, 13 "publishNotReadyAddresses" Bool, 17 "ipFamilyPolicy" Str,
    18 "clusterIPs" Strings, 19 "ipFamilies" Strings, 20 "allocateLoadBalancerNodePorts" BoolSet,
    21 "loadBalancerClass" Str, 22 "internalTrafficPolicy" Str, 23 "trafficDistribution" Str });
msg!(ServicePort { 1 "name" Str, 2 "protocol" Str, 3 "port" Int, 4 "targetPort" IntOrString,
    5 "nodePort" Int, 6 "appProtocol" Str });

// apps/v1
msg!(Deployment { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&DeploymentSpec), 3 "status" Skip });
msg!(DeploymentSpec { 1 "replicas" IntSet, 2 "selector" Msg(&LabelSelector),
    3 "template" Msg(&PodTemplateSpec), 4 "strategy" Msg(&DeploymentStrategy),
    5 "minReadySeconds" Int, 6 "revisionHistoryLimit" IntSet, 7 "paused" Bool,
    9 "progressDeadlineSeconds" IntSet });
msg!(DeploymentStrategy { 1 "type" Str, 2 "rollingUpdate" Msg(&RollingUpdate) });
msg!(RollingUpdate { 1 "maxUnavailable" IntOrString, 2 "maxSurge" IntOrString });
msg!(ReplicaSet { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&ReplicaSetSpec), 3 "status" Skip });
msg!(ReplicaSetSpec { 1 "replicas" IntSet, 2 "selector" Msg(&LabelSelector),
    3 "template" Msg(&PodTemplateSpec), 4 "minReadySeconds" Int });
msg!(DaemonSet { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&DaemonSetSpec), 3 "status" Skip });
msg!(DaemonSetSpec { 1 "selector" Msg(&LabelSelector), 2 "template" Msg(&PodTemplateSpec),
    3 "updateStrategy" Msg(&DeploymentStrategy), 4 "minReadySeconds" Int,
    6 "revisionHistoryLimit" IntSet });

// batch/v1
msg!(Job { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&JobSpec), 3 "status" Skip });
msg!(JobSpec { 1 "parallelism" IntSet, 2 "completions" IntSet, 3 "activeDeadlineSeconds" IntSet,
    4 "selector" Msg(&LabelSelector), 5 "manualSelector" BoolSet, 6 "template" Msg(&PodTemplateSpec),
    7 "backoffLimit" IntSet, 8 "ttlSecondsAfterFinished" IntSet, 9 "completionMode" Str,
    10 "suspend" BoolSet, 12 "backoffLimitPerIndex" IntSet, 13 "maxFailedIndexes" IntSet,
    14 "podReplacementPolicy" Str, 15 "managedBy" Str });
msg!(CronJob { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&CronJobSpec), 3 "status" Skip });
msg!(CronJobSpec { 1 "schedule" Str, 2 "startingDeadlineSeconds" IntSet, 3 "concurrencyPolicy" Str,
    4 "suspend" BoolSet, 5 "jobTemplate" Msg(&JobTemplateSpec), 6 "successfulJobsHistoryLimit" IntSet,
    7 "failedJobsHistoryLimit" IntSet, 8 "timeZone" Str });
msg!(JobTemplateSpec { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&JobSpec) });

// policy/v1
msg!(PodDisruptionBudget { 1 "metadata" Msg(&ObjectMeta), 2 "spec" Msg(&PodDisruptionBudgetSpec),
    3 "status" Skip });
msg!(PodDisruptionBudgetSpec { 1 "minAvailable" IntOrString, 2 "selector" Msg(&LabelSelector),
    3 "maxUnavailable" IntOrString, 4 "unhealthyPodEvictionPolicy" Str });

// scheduling.k8s.io/v1
msg!(PriorityClass { 1 "metadata" Msg(&ObjectMeta), 2 "value" IntSet, 3 "globalDefault" Bool,
    4 "description" Str, 5 "preemptionPolicy" Str });

/// The schema of a top-level kind kubectl may send as protobuf.
pub fn of_kind(kind: &str) -> Option<&'static Msg> {
    Some(match kind {
        "ConfigMap" => &ConfigMap,
        "Secret" => &Secret,
        "Namespace" => &Namespace,
        "Pod" => &Pod,
        "Service" => &Service,
        "Deployment" => &Deployment,
        "ReplicaSet" => &ReplicaSet,
        "DaemonSet" => &DaemonSet,
        "Job" => &Job,
        "CronJob" => &CronJob,
        "PodDisruptionBudget" => &PodDisruptionBudget,
        "PriorityClass" => &PriorityClass,
        _ => return None,
    })
}
