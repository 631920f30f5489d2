import { defineConfig } from "vite";

// Relative asset paths so the gateway can serve the build from any directory.
export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    chunkSizeWarningLimit: 2000,
  },
});
