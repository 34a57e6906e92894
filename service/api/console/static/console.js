// The console's only script (the Content-Security-Policy allows no inline one): times the
// server wrote in UTC are shown in the viewer's own time zone on hover.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("time[datetime]")) {
    const moment = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) {
      el.title = `${moment.toLocaleString()} (${el.title})`;
    }
  }
});
