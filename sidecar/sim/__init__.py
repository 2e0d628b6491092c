"""The emulated world: a Kubernetes API with a Deployment controller, a CloudFront endpoint,
real Redis servers. One implementation used by the tests, `cache-buster demo` and
`cache-buster sim`; imported lazily so production code paths never load it."""
