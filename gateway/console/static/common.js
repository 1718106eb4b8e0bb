// What every console page shares: the token pasted once (kept in this browser's localStorage,
// sent by the pages as a bearer token) and the navigation bar.
(function () {
  "use strict";
  const KEY = "citygate.token";
  window.citygateToken = () => window.localStorage.getItem(KEY) || "";
  const input = document.getElementById("token");
  const state = document.getElementById("token-state");
  const show = () => {
    input.value = window.citygateToken();
    state.textContent = window.citygateToken() ? "token set" : "anonymous";
  };
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    window.localStorage.setItem(KEY, input.value.trim().replace(/^Bearer\s+/i, ""));
    window.location.reload(); // every page asks again as the new caller
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    window.localStorage.removeItem(KEY);
    window.location.reload();
  });
  show();
  // The demo only (`citygate demo`): its roles' tokens, picked from a list instead of pasted.
  const config = JSON.parse(document.getElementById("citygate-config").textContent);
  const demo = config.demo;
  window.citygateDemoRole = () => {
    if (!demo) return "";
    const token = window.citygateToken();
    return Object.keys(demo.tokens).find((role) => demo.tokens[role] === token) || "";
  };
  // The role a token acts as (its first): the example GraphiQL opens with follows it. Read
  // from the token's payload for that only; the gateway alone verifies it.
  window.citygateTokenRole = () => {
    try {
      const part = window.citygateToken().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const roles = JSON.parse(atob(part)).roles;
      return (Array.isArray(roles) ? roles[0] : roles) || "";
    } catch (error) {
      return "";
    }
  };
  if (demo) {
    const picker = document.createElement("select");
    picker.id = "demo-role";
    picker.title = "act as a demo role (demo only)";
    for (const role of ["", ...Object.keys(demo.tokens)]) {
      const option = document.createElement("option");
      option.value = role;
      option.textContent = role ? "demo role: " + role : "demo role: anonymous";
      picker.appendChild(option);
    }
    picker.value = window.citygateDemoRole();
    picker.addEventListener("change", () => {
      if (picker.value) window.localStorage.setItem(KEY, demo.tokens[picker.value]);
      else window.localStorage.removeItem(KEY);
      window.location.reload();
    });
    document.getElementById("token-form").appendChild(picker);
    if (picker.value) state.textContent = "acting as " + picker.value;
  }
  window.citygateMarkNav = (name) => {
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("current", a.dataset.nav === name));
  };
  if (document.body.dataset.page === "graphiql") window.citygateMarkNav("graphiql");
})();
