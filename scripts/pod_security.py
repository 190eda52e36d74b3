#!/usr/bin/env python3
"""Checks every pod template in the given YAML files against the Kubernetes Pod Security
Standards' "restricted" profile (baseline included), field by field, as the admission
controller would at `pod-security.kubernetes.io/enforce: restricted`:

    python3 scripts/pod_security.py rendered.yaml ...

Prints each violation (kind/name, container, field) and exits 1 if there is any; needs PyYAML.
"""

import sys
import yaml

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t",
                 "container_engine_t"}


def pod_specs(doc):
    """(label, pod spec) of every pod a workload object makes."""
    kind = doc.get("kind")
    name = f"{kind}/{doc.get('metadata', {}).get('name')}"
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield name, spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield name, spec["template"]["spec"]
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"]


def violations(pod):
    found = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"spec.{field} must be unset or false")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: type {sorted(kinds)} is not allowed")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        found.append("securityContext.seccompProfile.type must not be Unconfined")
    if pod_sc.get("runAsUser") == 0:
        found.append("securityContext.runAsUser must not be 0")
    selinux = pod_sc.get("seLinuxOptions") or {}
    if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append("securityContext.seLinuxOptions is not allowed")
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in pod.get("ephemeralContainers") or []]
    for what, container in containers:
        at = f"{what} {container.get('name')}"
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{at}: securityContext.privileged must be unset or false")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{at}: securityContext.allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{at}: runAsNonRoot must be true (on the pod or the container)")
        if sc.get("runAsUser") == 0:
            found.append(f"{at}: securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{at}: seccompProfile.type must be RuntimeDefault or Localhost "
                         "(on the pod or the container)")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{at}: securityContext.capabilities.drop must include ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{at}: capabilities.add may hold only NET_BIND_SERVICE, not {sorted(added)}")
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"{at}: securityContext.procMount must be Default")
        csel = sc.get("seLinuxOptions") or {}
        if csel.get("type") not in SELINUX_TYPES or csel.get("user") or csel.get("role"):
            found.append(f"{at}: securityContext.seLinuxOptions is not allowed")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{at}: windowsOptions.hostProcess is not allowed")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{at}: ports[].hostPort must be unset or 0")
    return found


def main():
    failures = []
    pods = 0
    for path in sys.argv[1:]:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                for name, pod in pod_specs(doc):
                    pods += 1
                    failures += [f"{path}: {name}: {v}" for v in violations(pod)]
    if pods == 0:
        print("pod_security: no pod templates found", file=sys.stderr)
        return 1
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"pod_security: {pods} pod templates, {len(failures)} violations of \"restricted\"")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
