// Loaded by the hub pod before configurable-http-proxy's own entry (node --import): the proxy reads its API
// token from CONFIGPROXY_AUTH_TOKEN only, and an environment the pod gave it would be readable by the host in
// /proc/<pid>/environ. The pod writes the token into a pipe instead; setting process.env here changes only
// this process's memory, not what /proc shows.
import fs from "node:fs";

const fd = Number(process.env.TEELAB_HUB_POD_TOKEN_FD);
if (!Number.isInteger(fd) || fd < 3) {
  console.error("teelab hub pod: no token pipe for configurable-http-proxy");
  process.exit(2);
}
const token = fs.readFileSync(fd, "utf8");
fs.closeSync(fd);
delete process.env.TEELAB_HUB_POD_TOKEN_FD;
process.env.CONFIGPROXY_AUTH_TOKEN = token;
