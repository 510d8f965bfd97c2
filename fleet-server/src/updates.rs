//! A/B image updates from the server (decision 0019): ordering a node to install an image
//! and handing the image to it.
//!
//! Images live in `{data_dir}/images/`, each as `NAME` beside its minisign signature
//! `NAME.minisig`, put there by the release process. The server reads the signature's
//! manifest (version, target, size) and checks the size against the file, so an order
//! never names an image that is not all there; the cryptographic check is the node's,
//! against its own release key, before anything it downloaded can boot.
//!
//! An order is kept in the store until the node reports it final, and sent retained on
//! the node's `cmd/update` by [`run_sync`]: a node offline now finds it when it connects,
//! also after the server restarted (the embedded broker forgets retained messages). Once
//! the node reports the order's final step, the order is forgotten and its retained
//! message cleared, so a node re-imaged with an empty state directory never sees it again.
//! The node reports its steps on `nodes/{node}/update`; the console shows a node whose
//! latest step is not final as `updating`.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rakkr_protocol::NodeId;
use rakkr_protocol::update::{UpdateOrder, is_image_name};

use crate::audit::AuditChange;
use crate::http::{AppState, Problem, problem};
use crate::tls::PeerAddr;

/// The directory images are kept in.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// What `POST /api/v1/nodes/{id}/update` takes.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderUpdate {
    /// An image's file name in the server's `images/` directory.
    pub image: String,
}

/// What it answers: the order as sent to the node (without the signature text).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct OrderedUpdate {
    pub update_id: String,
    pub node: String,
    pub image: String,
    pub version: String,
    pub target: String,
    pub size: u64,
}

/// Reads an image's signature and checks the manifest against the file.
fn order_for(images: &Path, image: &str, now_ms: u64) -> Result<(UpdateOrder, String), Problem> {
    if !is_image_name(image) {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{image:?} is not an image name (letters, digits, . - _)"),
        ));
    }
    let path = images.join(image);
    let size = std::fs::metadata(&path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                format!("no image {image} in the server's images directory"),
            )
        })?;
    let sig_path = images.join(format!("{image}.minisig"));
    let text = rakkr_update::read_text_bounded(&sig_path, rakkr_update::MAX_SIGNATURE_BYTES)
        .map_err(|e| {
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("no usable signature {image}.minisig beside the image: {e}"),
            )
        })?;
    let signature = rakkr_update::ImageSignature::parse(&text)
        .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, format!("{image}: {e}")))?;
    let manifest = signature.manifest();
    if manifest.size != size {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{image} is {size} bytes but its signature names {}: not all there, or not the signed image",
                manifest.size
            ),
        ));
    }
    let order = UpdateOrder {
        update_id: rakkr_protocol::UpdateId::new(now_ms),
        image: image.to_owned(),
        version: manifest.version.clone(),
        size,
        signature: text,
    };
    Ok((order, manifest.target.clone()))
}

/// Orders `node` to install `image`: the order is checked, sent (retained) and described
/// for the audit log. Shared by the API and the node page's form.
pub async fn order_update(
    state: &AppState,
    node: &NodeId,
    image: String,
) -> Result<(OrderedUpdate, AuditChange), Problem> {
    if state.fleet.node(node).is_none() {
        return Err(problem(
            StatusCode::NOT_FOUND,
            format!("node {node} is not known to this server"),
        ));
    }
    let (images, now) = (state.images_dir.clone(), state.clock.unix_ms());
    let (order, target) = tokio::task::spawn_blocking(move || order_for(&images, &image, now))
        .await
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let answer = OrderedUpdate {
        update_id: order.update_id.to_string(),
        node: node.to_string(),
        image: order.image.clone(),
        version: order.version.clone(),
        target,
        size: order.size,
    };
    let (store, target_node) = (state.store.clone(), node.clone());
    tokio::task::spawn_blocking(move || store.set_update_order(&target_node, Some(&order)))
        .await
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // The sync runner sends it within a tick.
    state.update_sync.notify_one();
    tracing::info!(%node, image = %answer.image, version = %answer.version, update = %answer.update_id, "update ordered");
    let change = AuditChange {
        target: Some(format!("node:{node}")),
        before: None,
        after: Some(serde_json::json!({
            "update_id": answer.update_id,
            "image": answer.image,
            "version": answer.version,
        })),
    };
    Ok((answer, change))
}

/// `POST /api/v1/nodes/{id}/update` `{"image": "rootfs-1.4.0.img"}`: order the node to
/// install the image (202: sent; the node reports its steps).
pub async fn api_order_update(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<OrderUpdate>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let node = NodeId::new(id).map_err(|e| problem(StatusCode::NOT_FOUND, e.to_string()))?;
    let Json(body) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let (answer, change) = order_update(&state, &node, body.image).await?;
    Ok(change.to((StatusCode::ACCEPTED, Json(answer)).into_response()))
}

/// How often the stored orders are compared with what was sent and what the nodes report.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps every stored order sent (retained) until its node reports it final, then
/// forgets it and clears its retained message. Runs until `shutdown`.
pub async fn run_sync(
    store: std::sync::Arc<dyn rakkr_store::Store>,
    fleet: std::sync::Arc<crate::fleet::LiveFleet>,
    commands: crate::jobs::Commands,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use crate::jobs::Outbound;
    // Orders sent since this server started, by node: a restarted server sends all again.
    let mut sent: std::collections::HashMap<NodeId, rakkr_protocol::UpdateId> =
        std::collections::HashMap::new();
    loop {
        let orders = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.update_orders()).await
        };
        match orders {
            Ok(Ok(orders)) => {
                for (node, order) in orders {
                    let finished = fleet
                        .node(&node)
                        .and_then(|n| n.update)
                        .is_some_and(|r| r.update_id == order.update_id && !r.phase.in_progress());
                    if finished {
                        let (store, done) = (store.clone(), node.clone());
                        let forgotten = tokio::task::spawn_blocking(move || {
                            store.set_update_order(&done, None)
                        })
                        .await;
                        if matches!(forgotten, Ok(Ok(())))
                            && commands.try_send(Outbound::ClearUpdate(node.clone()))
                        {
                            sent.remove(&node);
                        }
                    } else if sent.get(&node) != Some(&order.update_id) {
                        let id = order.update_id;
                        if commands.try_send(Outbound::Update(node.clone(), order)) {
                            sent.insert(node, id);
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot read the update orders"),
            Err(e) => tracing::error!(error = %e, "update order task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SYNC_EVERY) => {}
            _ = wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Most images the node page offers.
pub const MAX_IMAGES_LISTED: usize = 100;

/// Images in `dir` that have a signature beside them, newest name first (bounded).
pub fn list_images(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| is_image_name(name) && !name.ends_with(".minisig"))
        .filter(|name| dir.join(format!("{name}.minisig")).is_file())
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names.truncate(MAX_IMAGES_LISTED);
    names
}

/// `GET /api/v1/node/images/{image}`: a node (HTTP Basic, its credential) fetches an image.
pub async fn node_image(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    UrlPath(image): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let target = format!("image:{}", image.chars().take(128).collect::<String>());
    let refuse = async |node: Option<&NodeId>, status: StatusCode, why: String| {
        crate::http::audit_node_request(
            &state,
            peer,
            node,
            "image download",
            Some(target.clone()),
            Some(&why),
        )
        .await;
        problem(status, why).into_response()
    };
    let Some((node, secret)) = crate::http::basic_auth(&headers) else {
        return refuse(
            None,
            StatusCode::UNAUTHORIZED,
            "a node authenticates with HTTP Basic: its node id and credential".into(),
        )
        .await;
    };
    let verified = {
        let (identities, node, secret) = (state.identities.clone(), node.clone(), secret);
        tokio::task::spawn_blocking(move || identities.verify(&node, &secret).is_ok()).await
    };
    if !matches!(verified, Ok(true)) {
        return refuse(
            None,
            StatusCode::UNAUTHORIZED,
            "wrong node id or credential".into(),
        )
        .await;
    }
    if !is_image_name(&image) {
        return refuse(
            Some(&node),
            StatusCode::BAD_REQUEST,
            format!("{image:?} is not an image name"),
        )
        .await;
    }
    let path = state.images_dir.join(&image);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            return refuse(
                Some(&node),
                StatusCode::NOT_FOUND,
                format!("no image {image}"),
            )
            .await;
        }
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => {
            return refuse(
                Some(&node),
                StatusCode::NOT_FOUND,
                format!("no image {image}"),
            )
            .await;
        }
    };
    crate::http::audit_node_request(
        &state,
        peer,
        Some(&node),
        "image download",
        Some(target),
        None,
    )
    .await;
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ))
    .into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_needs_a_whole_image_and_a_signature_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        let status = |r: Result<(UpdateOrder, String), Problem>| r.map(|_| ()).unwrap_err().status;
        assert_eq!(
            status(order_for(images, "../etc/passwd", 1)),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(order_for(images, "missing.img", 1)),
            StatusCode::NOT_FOUND
        );
        std::fs::write(images.join("a.img"), b"0123456789").unwrap();
        assert_eq!(
            status(order_for(images, "a.img", 1)),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // A signature (the minisign crate's test vector re-made with our manifest is not
        // possible without the key; the manifest is read before any crypto, so a
        // prehashed-looking signature with our comment is enough here).
        let sig = |size: u64| {
            format!(
                "untrusted comment: signature from minisign secret key\n\
                 RUTwtBMSZ5L69spvl3ceqfbiWNiKUgfV5Xci8QoFmRNTk5ovaypFenzl+U0y7GDdYHr2uIio3a4pIBOmntnxT04CdevZVKc97AI=\n\
                 trusted comment: rakkr-image version=1.4.0 target=x86_64 size={size}\n\
                 p30WVoWDSbFdgfJ0CIA+GfMb1ZlTus+yQ1oIEmuCX/jFPLGbZ1D7SfMCNxNmd5uehSB65tAwwoqG/r4JH58vCw==\n"
            )
        };
        std::fs::write(images.join("a.img.minisig"), sig(11)).unwrap();
        let err = order_for(images, "a.img", 1).map(|_| ()).unwrap_err();
        assert!(err.detail.contains("names 11"), "{}", err.detail);
        std::fs::write(images.join("a.img.minisig"), sig(10)).unwrap();
        let (order, target) = order_for(images, "a.img", 1).unwrap();
        assert_eq!(
            (order.version.as_str(), order.size, target.as_str()),
            ("1.4.0", 10, "x86_64")
        );
        assert!(order.signature.contains("size=10"));
        std::fs::write(images.join("b.img"), b"unsigned").unwrap();
        std::fs::write(images.join(".hidden.img.minisig"), b"x").unwrap();
        assert_eq!(list_images(images), ["a.img"]);
        assert!(list_images(&images.join("none")).is_empty());
    }
}
