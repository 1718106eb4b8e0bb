// The catalogue browser and the security officer's "view as role" page: plain DOM, no build.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v === null || v === undefined || v === false) return;
      else node.setAttribute(k, v);
    });
    children.flat().forEach((c) => node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c))));
    return node;
  };
  const failure = (body, response) => body.error || (body.errors && body.errors[0].message) || response.statusText;
  const authorized = (token) => (token ? { Authorization: "Bearer " + token } : {});
  const treatmentClass = (t) => (t === "denied" ? "treatment-denied" : t === "raw" ? "treatment-raw" : "treatment-masked");

  // -- catalogue ---------------------------------------------------------------------------
  let departments = [];
  async function loadCatalogue() {
    const params = new URLSearchParams();
    if ($("search").value.trim()) params.set("search", $("search").value.trim());
    if ($("department").value) params.set("department", $("department").value);
    const response = await fetch("/console/api/catalogue?" + params, { headers: authorized(window.citygateToken()) });
    const body = await response.json();
    if (!response.ok) {
      $("catalogue-role").textContent = "";
      $("departments").replaceChildren(el("li", { class: "error" }, failure(body, response)));
      return;
    }
    departments = body.departments;
    $("catalogue-role").textContent =
      "As role " + (body.role || "(no policies)") + ": " + body.resources + " resources in " + departments.length + " departments.";
    if (!$("department").options.length || $("department").options.length === 1) {
      departments.forEach((d) => $("department").append(el("option", { value: d.name }, d.display_name + " " + d.name)));
    }
    $("departments").replaceChildren(
      ...departments.map((d) =>
        el(
          "li",
          { "data-department": d.name },
          el("strong", {}, d.display_name + " "),
          el("span", { class: "muted" }, d.name + " · " + d.store + " · "),
          el("span", { class: "status-" + d.status }, d.status),
          el(
            "ul",
            {},
            d.resources.map((r) =>
              el("li", {}, el("button", { type: "button", "data-resource": r.root, onclick: () => showResource(d, r) }, r.name + " " + (r.description || "")))
            )
          )
        )
      )
    );
    if (!departments.length) $("resource").replaceChildren(el("p", { class: "muted" }, "Nothing matches."));
  }

  function showResource(department, resource) {
    document.querySelectorAll("[data-resource]").forEach((b) => b.classList.toggle("current", b.dataset.resource === resource.root));
    const facts = el(
      "table",
      { class: "facts" },
      el("tr", {}, el("th", {}, "department 部门"), el("td", {}, department.display_name + " (" + department.name + "), owner " + department.owner)),
      el("tr", {}, el("th", {}, "root field"), el("td", {}, el("code", {}, resource.root))),
      el("tr", {}, el("th", {}, "primary key"), el("td", {}, resource.primary_key.join(", "))),
      el("tr", {}, el("th", {}, "rows (estimate)"), el("td", {}, resource.rows_estimate != null ? "≈ " + resource.rows_estimate.toLocaleString() : resource.row_filter ? "not shown: your rows are filtered" : "unknown")),
      el("tr", {}, el("th", {}, "refreshed"), el("td", {}, new Date(resource.refreshed * 1000).toISOString())),
      el("tr", {}, el("th", {}, "your access"), el("td", {}, resource.access + (resource.k ? " (k=" + resource.k + ")" : "") + (resource.row_filter ? "; rows filtered by your token" : ""))),
      el(
        "tr",
        {},
        el("th", {}, "relationships"),
        el("td", {}, resource.relationships.length ? resource.relationships.map((r) => el("span", { class: "tag" }, r.name + " → " + r.target + " (" + r.kind + ")")) : "none")
      )
    );
    const columns = el(
      "table",
      { class: "columns-table" },
      el("tr", {}, el("th", {}, "column 字段"), el("th", {}, "type"), el("th", {}, "sharing class 共享类型"), el("th", {}, "your treatment")),
      resource.columns.map((c) =>
        el(
          "tr",
          { "data-column": c.name },
          el("td", {}, el("code", {}, c.name)),
          el("td", {}, c.type),
          el("td", {}, c.sharing_label || "unclassified"),
          el("td", { class: treatmentClass(c.treatment) }, c.treatment)
        )
      )
    );
    const open = el("a", { href: "/graphql#query=" + encodeURIComponent(resource.sample_query), id: "open-in-graphiql" }, "Open the sample query in GraphiQL →");
    $("resource").replaceChildren(
      el("h2", {}, resource.name + " — " + (resource.description || "")),
      facts,
      columns,
      el("pre", { class: "sample" }, resource.sample_query),
      open
    );
  }

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCatalogue();
  });

  // -- view as role ------------------------------------------------------------------------
  const ADMIN = "citygate.adminToken";
  $("admin-token").value = window.sessionStorage.getItem(ADMIN) || "";
  async function loadRoles() {
    const token = $("admin-token").value.trim();
    if (!token) return;
    window.sessionStorage.setItem(ADMIN, token);
    const response = await fetch("/console/api/roles", { headers: authorized(token) });
    const body = await response.json();
    if (!response.ok) {
      $("view-as-state").textContent = failure(body, response);
      return;
    }
    $("view-as-state").textContent = "";
    const kept = $("role").value; // asked again when the token changes: the choice stays
    $("role").replaceChildren(...body.roles.map((r) => el("option", { value: r.name }, r.name + (r.claims.length ? " (claims: " + r.claims.join(", ") + ")" : ""))));
    if (kept && body.roles.some((r) => r.name === kept)) $("role").value = kept;
  }
  $("admin-token").addEventListener("change", loadRoles);

  function claims() {
    const out = {};
    $("claims").value.split(/[,\s]+/).filter(Boolean).forEach((pair) => {
      const at = pair.indexOf("=");
      if (at > 0) out[pair.slice(0, at)] = pair.slice(at + 1);
    });
    return out;
  }

  $("view-as-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("view-as-state").textContent = "…";
    const response = await fetch("/console/api/view-as", {
      method: "POST",
      headers: Object.assign({ "content-type": "application/json" }, authorized($("admin-token").value.trim())),
      body: JSON.stringify({ role: $("role").value, claims: claims(), query: $("query").value }),
    });
    const body = await response.json();
    if (!response.ok) {
      $("view-as-state").textContent = failure(body, response);
      return;
    }
    $("view-as-state").textContent = "as " + body.role + ", policies " + body.policy_version;
    const tables = body.tables.map((t) =>
      el(
        "details",
        { open: t.visible ? "" : null, "data-table": t.department + "." + t.table },
        el(
          "summary",
          {},
          el("strong", {}, t.department + "." + t.table),
          " " + (t.visible ? t.access + (t.k ? " (k=" + t.k + ")" : "") : "absent for this role") + (t.row_filter ? " · row filter: " + t.row_filter : "")
        ),
        el(
          "table",
          {},
          el("tr", {}, el("th", {}, "column"), el("th", {}, "sharing class"), el("th", {}, "treatment"), el("th", {}, "decided by")),
          t.columns.map((c) =>
            el("tr", { "data-column": c.name }, el("td", {}, el("code", {}, c.name)), el("td", {}, c.sharing || "unclassified"), el("td", { class: treatmentClass(c.treatment === "deny" ? "denied" : c.treatment) }, c.treatment), el("td", {}, c.rule))
          )
        )
      )
    );
    // The answer and its SQL first, then every table's decisions, then the role's whole schema.
    const parts = [];
    if (body.answer) parts.push(el("h2", {}, "Answer 查询结果"), el("pre", { id: "answer" }, JSON.stringify(body.answer, null, 2)));
    if (body.explain) {
      parts.push(el("h2", {}, "SQL (explain)"));
      if (Array.isArray(body.explain)) {
        body.explain.forEach((s) => parts.push(el("p", { class: "muted" }, s.field + " on " + s.engine + " (" + s.dialect + ")"), el("pre", { class: "sql" }, s.sql)));
      } else parts.push(el("pre", { class: "sql error" }, body.explain.error));
    }
    parts.push(el("h2", {}, "Decisions 每列的处理 (" + body.role + ")"), ...tables);
    parts.push(el("details", {}, el("summary", {}, "Schema (SDL) of " + body.role), el("pre", { class: "schema" }, body.schema)));
    $("view-as-result").replaceChildren(...parts);
  });

  // -- pages -------------------------------------------------------------------------------
  const config = JSON.parse(document.getElementById("citygate-config").textContent);
  if (!$("query").value) $("query").value = config.example || "{ transport_stations(limit: 3) { name district } }";
  function route() {
    const page = window.location.hash === "#view-as" ? "view-as" : "catalogue";
    $("catalogue").hidden = page !== "catalogue";
    $("view-as").hidden = page !== "view-as";
    window.citygateMarkNav(page);
    if (page === "view-as") loadRoles();
  }
  window.addEventListener("hashchange", route);
  route();
  loadCatalogue();
})();
