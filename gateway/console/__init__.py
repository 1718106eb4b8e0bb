"""The console: GraphiQL from the gateway's own origin, the catalogue as each role sees it, and
a security officer's "view as role" page.

- :mod:`gateway.console.assets`: GraphiQL and React, pinned in ``package-lock.json`` here and
  installed by ``npm ci`` (``make install``), checked against the lockfile and served under a
  versioned path, so no browser asks a CDN for anything;
- :mod:`gateway.console.catalogue`: the catalogue entries a role may see, with each column's
  treatment for that role;
- :mod:`gateway.console.inspect`: what an administrator sees "as" a role (its schema, every
  decision and its reason, the SQL, the answer), with no key material in it;
- ``static/``: the pages, plain HTML, JavaScript and CSS, with no build step.

Its pages and endpoints are served by :mod:`gateway.http.console`, an application mounted at
``/console`` (it stands on the edge's envelope and guard, so it lives beside them: a module here
that imported the edge would make a cycle, since the edge mounts it).
"""
