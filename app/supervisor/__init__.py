"""The supervisor: the deployments table -> worker processes on this machine."""
