//! The gRPC service: decodes requests, calls the engine, maps errors to
//! codes (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
//! Internal).

use std::pin::Pin;
use std::sync::Arc;

use husk_agent_api::pb::{self, agent_server::Agent};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError, Exit};
use crate::net::NetError;

pub struct AgentService {
    pub engine: Arc<Engine>,
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        use EngineError as E;
        let msg = error_chain(&e);
        match e {
            E::Id(_) | E::Invalid(_) | E::Share(_) | E::Spec(_) => Status::invalid_argument(msg),
            E::NoContainer(_) | E::NoProcess(..) => Status::not_found(msg),
            E::Exists(_) => Status::already_exists(msg),
            E::State(_) | E::Stdio(_) => Status::failed_precondition(msg),
            E::Cgroup(_) | E::Spawn(_) | E::Io(..) => Status::internal(msg),
        }
    }
}

impl From<NetError> for Status {
    fn from(e: NetError) -> Status {
        let msg = error_chain(&e);
        match e {
            NetError::Invalid(_) => Status::invalid_argument(msg),
            NetError::NoIpv6 => Status::failed_precondition(msg),
            NetError::Connect(_) | NetError::Step { .. } => Status::internal(msg),
        }
    }
}

/// The error and its sources, once, separated by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn wait_resp(e: Exit) -> pb::WaitProcessResponse {
    pb::WaitProcessResponse {
        exit_code: e.code,
        signal: e.signal,
        oom_killed: e.oom_killed,
        exited_at_ns: e.at_ns,
        oom_kills: e.oom_kills,
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn version(&self, _: Request<pb::VersionRequest>) -> R<pb::VersionResponse> {
        Ok(Response::new(pb::VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: crate::kernel_release(),
            api_revision: husk_agent_api::API_REVISION,
        }))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> R<pb::HealthResponse> {
        Ok(Response::new(pb::HealthResponse { serving: true }))
    }

    async fn create_sandbox(&self, r: Request<pb::CreateSandboxRequest>) -> R<pb::Empty> {
        crate::pid1::create_sandbox(&self.engine, r.into_inner())?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn configure_network(&self, r: Request<pb::NetworkConfig>) -> R<pb::Empty> {
        // A few netlink round trips: short enough to block the runtime.
        let done = crate::net::configure(&r.into_inner())
            .inspect_err(|e| tracing::warn!(error = error_chain(e), "ConfigureNetwork"))?;
        for i in done {
            let addresses: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
            tracing::info!(
                mac = %i.mac,
                name = i.name,
                index = i.index,
                mtu = i.mtu,
                addresses = addresses.join(" "),
                "interface configured"
            );
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_container(
        &self,
        r: Request<pb::CreateContainerRequest>,
    ) -> R<pb::CreateContainerResponse> {
        let pid = self.engine.create_container(r.into_inner()).await?;
        Ok(Response::new(pb::CreateContainerResponse { pid }))
    }

    async fn start_container(&self, r: Request<pb::ContainerRequest>) -> R<pb::Empty> {
        self.engine
            .start_container(&r.into_inner().container_id)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn exec_process(&self, r: Request<pb::ExecProcessRequest>) -> R<pb::ExecProcessResponse> {
        let pid = self.engine.exec_process(r.into_inner()).await?;
        Ok(Response::new(pb::ExecProcessResponse { pid }))
    }

    async fn delete_process(&self, r: Request<pb::ProcessRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        self.engine.delete_exec(&r.container_id, &r.exec_id)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn signal_process(&self, r: Request<pb::SignalProcessRequest>) -> R<pb::Empty> {
        self.engine.signal(&r.into_inner())?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn wait_process(&self, r: Request<pb::ProcessRequest>) -> R<pb::WaitProcessResponse> {
        let r = r.into_inner();
        let e = self.engine.wait(&r.container_id, &r.exec_id).await?;
        Ok(Response::new(wait_resp(e)))
    }

    async fn resize_tty(&self, r: Request<pb::ResizeTtyRequest>) -> R<pb::Empty> {
        self.engine.resize_tty(&r.into_inner())?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn close_stdin(&self, r: Request<pb::ProcessRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        self.engine.close_stdin(&r.container_id, &r.exec_id)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn update_container(&self, r: Request<pb::UpdateContainerRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        self.engine.update(&r.container_id, r.resources)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stats_container(
        &self,
        r: Request<pb::ContainerRequest>,
    ) -> R<pb::StatsContainerResponse> {
        Ok(Response::new(
            self.engine.stats(&r.into_inner().container_id)?,
        ))
    }

    async fn pause_container(&self, r: Request<pb::ContainerRequest>) -> R<pb::Empty> {
        self.engine.set_paused(&r.into_inner().container_id, true)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn resume_container(&self, r: Request<pb::ContainerRequest>) -> R<pb::Empty> {
        self.engine
            .set_paused(&r.into_inner().container_id, false)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn remove_container(&self, r: Request<pb::RemoveContainerRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        self.engine.remove(&r.container_id, r.force).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_processes(
        &self,
        r: Request<pb::ContainerRequest>,
    ) -> R<pb::ListProcessesResponse> {
        let pids = self.engine.list(&r.into_inner().container_id)?;
        Ok(Response::new(pb::ListProcessesResponse { pids }))
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn events(&self, _: Request<pb::EventsRequest>) -> R<Self::EventsStream> {
        let rx = self.engine.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| match e {
            Ok(ev) => Some(Ok(ev)),
            Err(lagged) => {
                tracing::warn!(error = %lagged, "event subscriber too slow; events dropped");
                None
            }
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn shutdown(&self, _: Request<pb::Empty>) -> R<pb::Empty> {
        self.engine.shutdown.send_replace(true);
        Ok(Response::new(pb::Empty {}))
    }
}
