//! The `ferry.v1.Send` service: one message to a named route or an explicit target, with
//! its metadata, answered with a `SendReply` (the Kafka partition and offset included).
//! It goes through the same [`Ingress`] as the legacy unary service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::daemon::access::Caller;
use crate::daemon::ingress::Ingress;
use crate::proto::ferry::v1::send_server::Send;
use crate::proto::ferry::v1::{SendReply, SendRequest};
use crate::wire;

/// The `Send` service over an [`Ingress`].
pub struct SendService {
    /// Validation, access check and forwarding.
    ingress: Arc<Ingress>,
}

impl SendService {
    /// A service forwarding through `ingress`.
    pub fn new(ingress: Arc<Ingress>) -> Self {
        Self { ingress }
    }
}

#[tonic::async_trait]
impl Send for SendService {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        let ingress = Arc::clone(&self.ingress);
        // In a task of its own, as the legacy calls: a caller that hangs up does not cut
        // its message off half-sent.
        let caller = request.extensions().get::<Caller>().cloned();
        tokio::spawn(async move {
            let validated =
                wire::send_request(request.into_inner(), ingress.limits(), &ingress.routes());
            ingress.send_v1(validated, caller.as_ref()).await
        })
        .await
        .map(Response::new)
        .map_err(|error| {
            log::error!(error:% = error; "Forwarding task failed");
            Status::internal("ferry failed while forwarding this message")
        })
    }
}
