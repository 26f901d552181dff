//! The admin listener: the admin API (`http.rs`) and the console
//! (`console/`) mounted in one server, with request ids, tracing and metrics.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{HttpServer, web};
use tracing_actix_web::TracingLogger;

use tenantry_core::web::no_route;

use crate::plane::ControlPlane;

/// Serves the admin API on `listener` until stopped; a stop (SIGTERM) lets
/// in-flight requests finish for at most `drain_secs`.
pub fn server(
    cp: Arc<ControlPlane>,
    listener: TcpListener,
    workers: usize,
    drain_secs: u64,
) -> std::io::Result<Server> {
    let cp = web::Data::from(cp);
    let http_metrics = web::Data::from(tenantry_core::metrics::HttpMetrics::new("tenantry_admin"));
    Ok(HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::from_fn(tenantry_core::web::refuse_nul))
            .wrap(actix_web::middleware::from_fn(tenantry_core::metrics::record))
            .wrap(actix_web::middleware::from_fn(tenantry_core::web::request_id_header))
            .wrap(TracingLogger::<StaffSpan>::new())
            .app_data(cp.clone())
            .app_data(http_metrics.clone())
            .configure(crate::console::routes)
            .configure(crate::http::routes)
            .default_service(web::to(no_route))
    })
    .workers(workers.max(1))
    .shutdown_timeout(drain_secs)
    .listen(listener)?
    .run())
}

/// Root span of every admin request, with the member of staff's subject
/// (`user`) once the [`Admin`](crate::auth::Admin) extractor has checked it.
pub struct StaffSpan;

impl tracing_actix_web::RootSpanBuilder for StaffSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        tracing_actix_web::root_span!(request, user = tracing::field::Empty)
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
