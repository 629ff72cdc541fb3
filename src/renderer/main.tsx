// The app's entry: in the Electron shell the preload's bridge (`window.snowbird`) carries the API;
// in a browser the page's token (from the URL the agent printed) opens the API WebSocket of the same
// origin. The controller keeps the store, React renders it.
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { ApiClient, BridgeClient, type TransportFactory } from './api.ts';
import { Controller } from './controller.ts';
import { ControllerContext } from './hooks.ts';
import { App } from './components/App.tsx';

const bridge = window.snowbird;
const openTransport: TransportFactory = bridge === undefined
  ? (events) => new ApiClient(ApiClient.urlFor(window.location, new URLSearchParams(window.location.search).get('token') ?? ''), events)
  : (events) => new BridgeClient(bridge, events);
const controller = new Controller(openTransport);
controller.start();

const root = document.getElementById('root');
if (root === null) throw new Error('the page has no #root');
createRoot(root).render(
  <StrictMode>
    <ControllerContext.Provider value={controller}>
      <App />
    </ControllerContext.Provider>
  </StrictMode>,
);
