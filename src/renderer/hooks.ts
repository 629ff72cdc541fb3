// React's window on the app's state: components read the vanilla store through selectors (re-rendered
// only when what they select changes) and call the controller's actions; they never write the store.
import { createContext, useContext } from 'react';
import { useStore } from 'zustand';
import type { Controller } from './controller.ts';
import type { UiState } from './state.ts';

export const ControllerContext = createContext<Controller | null>(null);

export function useController(): Controller {
  const controller = useContext(ControllerContext);
  if (controller === null) throw new Error('useController outside <ControllerContext.Provider>');
  return controller;
}

export function useUi<T>(selector: (state: UiState) => T): T {
  return useStore(useController().store, selector);
}
