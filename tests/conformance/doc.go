// Package conformance drives gpulet the way the kubelet does, with the kubelet's own
// device-manager code: the registration server and plugin client of
// k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1. See README.md.
package conformance
