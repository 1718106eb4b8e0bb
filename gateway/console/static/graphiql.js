// GraphiQL from the gateway's own origin. The query comes from #query= (the catalogue's
// "open in GraphiQL") or the demo's example; a token pasted once in the bar (kept in this
// browser's localStorage) is sent as the Authorization header, and shown in the Headers tab.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("citygate-config").textContent);
  const host = document.getElementById("graphiql");
  if (config.missing || typeof GraphiQL === "undefined" || typeof React === "undefined") {
    host.innerHTML = "";
    const notice = document.createElement("div");
    notice.className = "notice";
    notice.id = "assets-missing";
    notice.textContent = "GraphiQL cannot start: " + (config.missing ||
      "its scripts did not load. Install them with `make install` (npm ci in gateway/console) and restart the gateway.");
    host.appendChild(notice);
    return;
  }
  const token = window.citygateToken();
  const base = GraphiQL.createFetcher({ url: config.endpoint });
  // The stored token rides along unless the Headers tab names an Authorization of its own.
  const fetcher = (params, options) => {
    const headers = Object.assign({}, (options && options.headers) || {});
    const stored = window.citygateToken();
    if (stored && !Object.keys(headers).some((h) => h.toLowerCase() === "authorization")) {
      headers.Authorization = "Bearer " + stored;
    }
    return base(params, Object.assign({}, options, { headers }));
  };
  // In the fragment, not the query string: GET /graphql?query= is a GraphQL request, not this page.
  const wanted = new URLSearchParams(window.location.hash.slice(1)).get("query");
  // The demo opens with an example the token's role can run (anonymous: the page's own).
  const role = window.citygateTokenRole();
  const example = (config.demo && config.demo.examples[role]) || config.example;
  const props = {
    fetcher,
    defaultQuery: example || undefined,
    defaultHeaders: token ? JSON.stringify({ Authorization: "Bearer " + token }, null, 2) : undefined,
    defaultEditorToolsVisibility: true,
  };
  // A query the catalogue sent opens as it is; otherwise GraphiQL keeps this browser's own
  // tabs, and the example is what a first visit sees.
  if (wanted) props.query = wanted;
  // The demo: when the caller's role changes, the editor opens that role's example, which
  // it can run (GraphiQL would keep the last role's tab, whose fields this role may lack).
  const EXAMPLE_FOR = "citygate.example-for";
  if (!wanted && config.demo && window.localStorage.getItem(EXAMPLE_FOR) !== role) props.query = example;
  if (config.demo) window.localStorage.setItem(EXAMPLE_FOR, role);
  ReactDOM.createRoot(host).render(React.createElement(GraphiQL, props));
})();
