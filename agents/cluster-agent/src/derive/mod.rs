//! Values nodeadm derives when the user did not set them: max-pods, kube-reserved, cluster
//! DNS, node IP. Pure functions of facts, each with the rule it follows.

pub mod maxpods;
pub mod network;
pub mod reserved;
