//! A CRI client (the `k8s-cri` crate's generated tonic client over
//! containerd's unix socket) with blocking calls, as kubelet would use it.

// tonic::Status is the error the tests inspect for its code.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take.
pub const CRI_TIMEOUT: Duration = Duration::from_secs(60);

/// Blocking CRI runtime-service client.
#[derive(Clone)]
pub struct Cri {
    rt: Arc<tokio::runtime::Runtime>,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI plugin at containerd's `socket`.
    pub fn connect(socket: &Path) -> Result<Self> {
        Self::connect_with_timeout(socket, CRI_TIMEOUT)
    }

    /// Connects with `timeout` per call (a microVM pod's RunPodSandbox
    /// waits for the guest to boot).
    pub fn connect_with_timeout(socket: &Path, timeout: Duration) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")?
                    .timeout(timeout)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            tokio::net::UnixStream::connect(socket)
                                .await
                                .map(TokioIo::new)
                        }
                    })),
            )
            .context("connect to the CRI socket")?;
        Ok(Cri {
            rt: Arc::new(rt),
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Runs one call on the client; the tonic status is kept as the error's
    /// source so tests can read its code.
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        self.rt.block_on(fut).map(|r| r.into_inner())
    }

    /// RunPodSandbox with `handler`; returns the sandbox id.
    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let r = self
            .call(|mut c| async move { c.run_pod_sandbox(req).await })
            .context("RunPodSandbox")?;
        Ok(r.pod_sandbox_id)
    }

    /// Ids of the pod sandboxes whose metadata name is `name`.
    pub fn pods_named(&self, name: &str) -> Result<Vec<String>> {
        let req = ListPodSandboxRequest { filter: None };
        let r = self
            .call(|mut c| async move { c.list_pod_sandbox(req).await })
            .context("ListPodSandbox")?;
        Ok(r.items
            .into_iter()
            .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
            .map(|p| p.id)
            .collect())
    }

    /// PodSandboxStatus, verbose (with containerd's `info` JSON).
    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatusResponse> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        self.call(|mut c| async move { c.pod_sandbox_status(req).await })
            .context("PodSandboxStatus")
    }

    /// StopPodSandbox.
    pub fn stop_pod(&self, id: &str) -> Result<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })
            .context("StopPodSandbox")?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await })
            .context("RemovePodSandbox")?;
        Ok(())
    }

    /// CreateContainer in pod `pod_id`; returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        pod: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        };
        self.call(|mut c| async move { c.create_container(req).await })
            .map(|r| r.container_id)
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call(|mut c| async move { c.start_container(req).await })
            .context("StartContainer")?;
        Ok(())
    }

    /// StopContainer with a grace period in seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.call(|mut c| async move { c.stop_container(req).await })
            .context("StopContainer")?;
        Ok(())
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(|mut c| async move { c.remove_container(req).await })
            .context("RemoveContainer")?;
        Ok(())
    }

    /// ExecSync; returns (exit code, stdout, stderr).
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<(i32, String, String)> {
        self.exec_sync_timeout(id, cmd, 30)
    }

    /// ExecSync with the command's own timeout in seconds.
    pub fn exec_sync_timeout(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<(i32, String, String)> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let r = self
            .call(|mut c| async move { c.exec_sync(req).await })
            .context("ExecSync")?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// ContainerStats.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        let r = self
            .call(|mut c| async move { c.container_stats(req).await })
            .context("ContainerStats")?;
        r.stats.context("ContainerStats returned no stats")
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r = self
            .call(|mut c| async move { c.container_status(req).await })
            .context("ContainerStatus")?;
        r.status.context("ContainerStatus returned no status")
    }

    /// UpdateContainerResources (Linux).
    pub fn update_resources(&self, id: &str, linux: LinuxContainerResources) -> Result<()> {
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        self.call(|mut c| async move { c.update_container_resources(req).await })
            .context("UpdateContainerResources")?;
        Ok(())
    }
}

/// A pod sandbox config with its own network namespace (CNI bridge of the
/// test environment) and `cgroup_parent`.
pub fn pod_config(name: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "husk-e2e".into(),
            attempt: 0,
        }),
        hostname: "husk-e2e".into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container config running `sh -c <script>`.
pub fn container_config(
    name: &str,
    script: &str,
    resources: Option<LinuxContainerResources>,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "localhost/busybox:local".into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        linux: Some(LinuxContainerConfig {
            resources,
            ..Default::default()
        }),
        ..Default::default()
    }
}
