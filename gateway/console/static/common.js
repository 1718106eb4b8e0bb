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
  window.citygateMarkNav = (name) => {
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("current", a.dataset.nav === name));
  };
  if (document.body.dataset.page === "graphiql") window.citygateMarkNav("graphiql");
})();
