/* A table wider than its column is shown as cards, one per row, each cell under its
   column's name (_static/parcourse.css, table.parcourse-cards): on a phone a table of
   results reads down the page instead of scrolling sideways. A table that fits keeps its
   grid; the choice is made again when the window's width changes.
   tests/site/test_site_browser.py checks that no table or its container overflows. */
(function () {
  "use strict";

  function label(table) {  // each cell carries its column's name, once
    if (table.dataset.parcourseLabelled) return;
    const names = Array.from(table.querySelectorAll("thead tr:last-child th"))
      .map((th) => th.innerText.trim());
    table.querySelectorAll("tbody tr").forEach((row) => {
      Array.from(row.children).forEach((cell, i) => {
        cell.setAttribute("data-label", names[i] || "");
      });
    });
    table.dataset.parcourseLabelled = "1";
  }

  const column = () => document.querySelector("article") || document.body;

  function fit() {
    document.querySelectorAll("article table").forEach((table) => {
      if (!table.querySelector("thead th")) return;  // no header: nothing to name cells by
      const box = table.closest(".pst-scrollable-table-container") || table.parentElement;
      label(table);
      table.classList.remove("parcourse-cards");
      if (table.offsetWidth > box.clientWidth + 1) table.classList.add("parcourse-cards");
    });
    // the column's width the tables were last fitted to (the browser test waits for it)
    document.documentElement.dataset.parcourseTablesFitted = String(column().clientWidth);
  }

  let pending = false, fitted = -1;
  function refit() {  // once a frame at most, and only when the column's width changed
    if (pending || column().clientWidth === fitted) return;
    pending = true;
    window.requestAnimationFrame(() => { pending = false; fitted = column().clientWidth; fit(); });
  }

  function refitNow() {  // at once, whatever the width (the page has just loaded)
    fitted = column().clientWidth;
    fit();
  }

  function start() {
    refitNow();
    // the column changes width with the window, and when the theme shows or hides a
    // sidebar; the cards change only its height, which is not watched
    new ResizeObserver(refit).observe(column());
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  window.addEventListener("load", refitNow);  // images and fonts may have moved it
})();
