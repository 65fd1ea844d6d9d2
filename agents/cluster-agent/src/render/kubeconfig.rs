//! Kubelet's kubeconfig: an IAM exec plugin on EKS, a bootstrap token on EKS Anywhere.
//!
//! nodeadm runs `aws eks get-token --cluster-name <name> --region <region>`. Berth ships no
//! AWS CLI (it needs Python, and production images have no interpreter), so it runs
//! `aws-iam-authenticator token -i <name> --region <region>`, as Bottlerocket does: the same
//! STS presigned token, accepted by EKS the same way. Scalars are written as JSON strings,
//! which YAML reads verbatim, so a cluster named `123` stays a string.

use super::resolve::{Auth, Node};
use super::{OutputFile, RenderError};
use crate::paths;
use std::fmt::Write;

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The `clusters` section: the API server and the CA file.
fn cluster_section(server: &str) -> String {
    format!(
        "clusters:\n  - name: kubernetes\n    cluster:\n      certificate-authority: {}\n      server: {}\n",
        quoted(&paths::host(paths::CLUSTER_CA)),
        quoted(server),
    )
}

// `write!` into a `String` cannot fail; its `fmt::Result` is dropped with `let _`.
fn header(server: &str, user: &str) -> String {
    let mut s = String::from("---\napiVersion: v1\nkind: Config\n");
    s.push_str(&cluster_section(server));
    let _ = write!(
        s,
        "current-context: {user}\ncontexts:\n  - name: {user}\n    context:\n      cluster: kubernetes\n      user: {user}\n"
    );
    s
}

/// The files for `node`'s authentication mode (none for a standalone kubelet).
pub fn files(node: &Node) -> Result<Vec<OutputFile>, RenderError> {
    let Some(server) = node.api_server.as_deref() else {
        return Ok(Vec::new());
    };
    match &node.auth {
        Auth::Aws { cluster, region } => {
            let mut s = header(server, "kubelet");
            let _ = write!(
                s,
                "users:\n  - name: kubelet\n    user:\n      exec:\n        apiVersion: client.authentication.k8s.io/v1beta1\n        command: {}\n        args:\n",
                quoted(paths::AWS_IAM_AUTHENTICATOR)
            );
            for arg in ["token", "-i", cluster, "--region", region] {
                let _ = writeln!(s, "          - {}", quoted(arg));
            }
            // 0600: the file names no secret, but kubelet's credentials config is root's only.
            Ok(vec![OutputFile::new(paths::KUBECONFIG, 0o600, s)])
        }
        Auth::Tls { token } => {
            let mut s = header(server, "kubelet-bootstrap");
            let _ = write!(
                s,
                "users:\n  - name: kubelet-bootstrap\n    user:\n      token: {}\n",
                quoted(token)
            );
            // The token lets anyone join the cluster: root only.
            Ok(vec![OutputFile::new(paths::BOOTSTRAP_KUBECONFIG, 0o600, s)])
        }
        Auth::Standalone => Ok(Vec::new()),
    }
}
