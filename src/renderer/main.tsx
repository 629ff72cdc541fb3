// The app's entry: the page's token (from the URL the agent printed) opens the API WebSocket of the
// same origin; the controller keeps the store, React renders it.
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { ApiClient } from './api.ts';
import { Controller } from './controller.ts';
import { ControllerContext } from './hooks.ts';
import { App } from './components/App.tsx';

const token = new URLSearchParams(window.location.search).get('token') ?? '';
const controller = new Controller(ApiClient.urlFor(window.location, token));
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
