"""CDN providers behind one small interface (see base.py). CloudFront: `cloudfront.py`, the
invalidation client, and `cloudfront_index.py`, which distribution serves a domain."""
