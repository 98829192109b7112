"""KubeRay backend builders: RayCluster manifests from vetted templates, with the organisation's policy applied.

Everything here is pure: no Kubernetes API calls and no I/O beyond reading the files
packaged with this module (CRD schemas, templates, the default policy).
"""
