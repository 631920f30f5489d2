import { defineConfig } from "vite";

// Relative asset paths so the gateway can serve the build from any directory; three pages
// sharing one map module and the SDK (compiled from its TypeScript source).
export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    chunkSizeWarningLimit: 2000,
    // The dispatcher's dashboard and the rider's and driver's reference apps.
    rollupOptions: {
      input: {
        dashboard: "index.html",
        rider: "rider.html",
        driver: "driver.html",
      },
    },
  },
});
