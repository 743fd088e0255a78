"""The OCI layer: blobs, uploads, manifests, tags, referrers and the key layout."""
