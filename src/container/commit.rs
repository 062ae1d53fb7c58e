//! `cairn commit`: the container's upper layer becomes a new layer on top of
//! its image. The layer tar, a config (the image's, with one more diff_id
//! and history entry) and a manifest go into an OCI layout directory that
//! the store then loads like any other (base blobs are linked, not copied).

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::config::{Container, Containers};
use super::diff::write_layer_tar;
use super::{ContainerError, Ctx, Result, userns};
use crate::store::archive::{self, OCI_CONFIG, OCI_MANIFEST};
use crate::store::{Digest, NoProgress, reference};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Commits container `c` as image `name`; returns the new image id.
pub fn commit(cs: &Containers, c: &Container, name: &str) -> Result<Digest> {
    let name = reference::normalize(name)?;
    let store = &cs.store;
    let cdir = cs.dir(&c.id);
    let layout = cdir.join("commit");
    userns::remove_tree(&layout)?;
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_ctx(|| format!("creating {}", blobs.display()))?;
    let tar_path = layout.join("layer.tar");
    // Read the upper layer where its files are all readable.
    let upper = cdir.join("upper");
    let tp = tar_path.clone();
    userns::run_as_root(move || {
        let f = fs::File::create(&tp).map_err(|e| format!("creating {}: {e}", tp.display()))?;
        let w = write_layer_tar(&upper, BufWriter::new(f))
            .map_err(|e| format!("reading {}: {e}", upper.display()))?;
        w.into_inner()
            .map_err(|e| e.to_string())?
            .sync_all()
            .map_err(|e| e.to_string())?;
        Ok(Vec::new())
    })?;
    let result = (|| {
        let (diff_id, size) = {
            let mut f = fs::File::open(&tar_path).ctx("opening the layer tar")?;
            let mut h = crate::store::digest::HashingReader::new(&mut f);
            io::copy(&mut h, &mut io::sink()).ctx("hashing the layer tar")?;
            h.finish()
        };
        fs::rename(&tar_path, blobs.join(diff_id.hex())).ctx("moving the layer tar")?;

        let m = store.read_meta()?;
        let img = m
            .images
            .get(&c.image)
            .ok_or_else(|| crate::store::StoreError::ImageNotFound(c.image.to_string()))?;
        let mut config: Value = serde_json::from_slice(&store.read_blob(&img.config)?)
            .map_err(|e| ContainerError::Launch(format!("image config: {e}")))?;
        let now = crate::store::now_rfc3339();
        config["created"] = json!(now);
        match config["rootfs"]["diff_ids"].as_array_mut() {
            Some(a) => a.push(json!(diff_id.to_string())),
            None => {
                return Err(ContainerError::Launch("image config has no rootfs".into()));
            }
        }
        let entry = json!({"created": now, "created_by": format!("cairn commit {}", c.name)});
        match config["history"].as_array_mut() {
            Some(h) => h.push(entry),
            None => config["history"] = json!([entry]),
        }
        let cbytes = serde_json::to_vec(&config)
            .map_err(io::Error::other)
            .ctx("config")?;
        let cdigest = Digest::of(&cbytes);
        fs::write(blobs.join(cdigest.hex()), &cbytes).ctx("writing the config")?;

        let mut layers: Vec<Value> = Vec::new();
        for l in &img.layers {
            let link = blobs.join(l.digest.hex());
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(store.blob_path(&l.digest), &link)
                    .ctx("linking a base layer")?;
            }
            layers.push(
                json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size}),
            );
        }
        layers.push(json!({"mediaType": LAYER_TAR, "digest": diff_id.to_string(), "size": size}));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdigest.to_string(), "size": cbytes.len()},
            "layers": layers,
        });
        let mbytes = serde_json::to_vec(&manifest)
            .map_err(io::Error::other)
            .ctx("manifest")?;
        let mdigest = Digest::of(&mbytes);
        fs::write(blobs.join(mdigest.hex()), &mbytes).ctx("writing the manifest")?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": mdigest.to_string(),
                "size": mbytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }],
        });
        let mut f = fs::File::create(layout.join("index.json")).ctx("writing index.json")?;
        f.write_all(
            &serde_json::to_vec(&index)
                .map_err(io::Error::other)
                .ctx("index")?,
        )
        .ctx("writing index.json")?;
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .ctx("writing oci-layout")?;
        let loaded = archive::load(store, &layout, &NoProgress)?;
        loaded
            .into_iter()
            .next()
            .map(|l| l.id)
            .ok_or_else(|| ContainerError::Launch("the commit loaded no image".into()))
    })();
    let _ = userns::remove_tree(&layout);
    result
}

/// Whether `p` holds anything (an empty upper layer means no changes).
pub fn has_changes(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}
