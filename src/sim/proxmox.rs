//! Simulated Proxmox VE implementing the Proxmox port (filled in by the Proxmox issue).
